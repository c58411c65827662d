"""Probes of a server that may be down or starting: an answer, or None to poll again."""

from __future__ import annotations

from paramserver.security.credentials import ClientSecurity
from paramserver.status import ServerStatus
from workers.connection import ServerConnection


def probe_status(address: str, include_state_hash: bool = False,
                 timeout_s: float = 5.0,
                 security: ClientSecurity | None = None) -> ServerStatus | None:
    """The server's status, or None when it does not answer (no retries)."""
    connection = ServerConnection(address, timeout_s, retry_s=0.0, security=security)
    try:
        return connection.status(include_state_hash)
    except Exception:  # noqa: BLE001 - a dead or starting server: the caller polls again
        return None
    finally:
        connection.close()

