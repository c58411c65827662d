"""Who may call what: access roles, the authenticated caller, and the rules (issue #13).

| RPC | observer | worker | admin |
| --- | --- | --- | --- |
| Handshake as an observer (under its own name; admin: any name) | yes | yes | yes |
| Handshake as a worker (under its own name only) | - | yes | - |
| Register, Push, JoinRound (on its own session) | - | yes | - |
| Pull, Heartbeat, Leave (on its own session) | yes | yes | yes |
| Status | yes | yes | yes |
| Status with the state hash | - | - | yes |

A session belongs to the credential that opened it: any other credential using its id gets
PERMISSION_DENIED. Without authentication (plaintext on loopback) there is no caller and
these rules are off; `Status` never carries session ids either way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from paramserver.errors import PermissionDenied
from paramserver.types import Role

MAX_PRINTED_IDENTITY = 64  # characters of an identity shown in logs and tables


class AccessRole(enum.Enum):
    """What a credential is allowed to do (carried in its certificate or token entry)."""

    OBSERVER = "observer"  # pull and read status
    WORKER = "worker"  # train: handshake, register, push, pull, heartbeat, leave, rounds
    ADMIN = "admin"  # observe under any name, and read the state hash


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its identity (a worker's id) and access role."""

    name: str
    role: AccessRole

    def __str__(self) -> str:
        return f"{self.role.value} {printable(self.name)!r}"


# The access roles that may call each method at all; session ownership and the handshake's
# name are checked by the core (`check_handshake`, `check_owner`).
METHOD_ROLES: dict[str, frozenset[AccessRole]] = {
    "Handshake": frozenset(AccessRole),
    "Register": frozenset({AccessRole.WORKER}),
    "Push": frozenset({AccessRole.WORKER}),
    "JoinRound": frozenset({AccessRole.WORKER}),
    "Pull": frozenset(AccessRole),
    "Heartbeat": frozenset(AccessRole),
    "Leave": frozenset(AccessRole),
    "Status": frozenset(AccessRole),
    # A shard's whole state (parameters and optimizer state) for a worker's own checkpoint;
    # installing one is a worker's act on fresh servers.
    "GetState": frozenset({AccessRole.WORKER, AccessRole.ADMIN}),
    "SetState": frozenset({AccessRole.WORKER}),
    "Step": frozenset({AccessRole.WORKER}),  # a push and its pull in one call (issue #14)
    # Row-sparse tables (issue #16): declaring them and pushing rows is training; rows are
    # read like parameters.
    "DeclareTables": frozenset({AccessRole.WORKER}),
    "PushRows": frozenset({AccessRole.WORKER}),
    "PullRows": frozenset(AccessRole),
    "SecureAggregate": frozenset({AccessRole.WORKER}),  # a client's secure round (issue #17)
}


def check_method(caller: Principal, method: str) -> None:
    """PermissionDenied unless `caller`'s role may call `method` (unknown methods: never)."""
    allowed = METHOD_ROLES.get(method, frozenset())
    if caller.role not in allowed:
        needs = " or ".join(sorted(r.value for r in allowed)) or "nobody"
        raise PermissionDenied(f"{method} needs a {needs} credential; this call was made "
                               f"with the credential of {caller}")


def check_handshake(caller: Principal | None, worker_id: str, role: Role) -> None:
    """A worker session only under the caller's own name with a worker credential; an
    observer session under the caller's own name (admin: any name)."""
    if caller is None:
        return
    if role is Role.WORKER and caller.role is not AccessRole.WORKER:
        raise PermissionDenied(f"only a worker credential can open a worker session; the "
                               f"credential of {caller} may open an observer session")
    if worker_id != caller.name and not (role is Role.OBSERVER
                                         and caller.role is AccessRole.ADMIN):
        raise PermissionDenied(f"the credential of {caller} cannot open a session as "
                               f"{printable(worker_id)!r}: use that worker's own credential, "
                               "or your own name as worker id")


def check_owner(caller: Principal | None, owner: str | None, session_id: str) -> None:
    """PermissionDenied when `caller` did not open the session it uses."""
    if caller is not None and owner != caller.name:
        raise PermissionDenied(f"session {session_id[:8]} was not opened by {caller}: a "
                               "session can only be used by the credential that opened it")


def check_state_hash(caller: Principal | None) -> None:
    if caller is not None and caller.role is not AccessRole.ADMIN:
        raise PermissionDenied(f"the state hash needs an admin credential; {caller} may read "
                               "the status without it")


def printable(text: str, limit: int = MAX_PRINTED_IDENTITY) -> str:
    """`text` safe to print: control characters (escape sequences included) as '?', at
    most `limit` characters (longer ones end in '...')."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit + 1])
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 3] + "..."
