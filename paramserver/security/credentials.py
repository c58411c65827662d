"""Credentials of a server and of its clients, loaded from files or the environment.

A server has a certificate and key (TLS), and authenticates its callers by one of: a client
CA (mutual TLS: the identity and role are in the client's certificate, see `certs.py`) or a
token file (TLS-only setups: each line `ROLE NAME TOKEN`). A client has the CA that signed
the servers' certificates, its own certificate and key (mutual TLS) or a bearer token.
`paramserver/transport.py` turns these into gRPC credentials; `server/auth.py` checks them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from paramserver.security.roles import AccessRole, Principal

# Client credentials from the environment, for code that does not pass them (attach under a
# launcher, the examples): paths, except PARAMSERVER_TOKEN which is the token itself.
ENV_CA = "PARAMSERVER_TLS_CA"
ENV_CERT = "PARAMSERVER_TLS_CERT"
ENV_KEY = "PARAMSERVER_TLS_KEY"
ENV_TOKEN = "PARAMSERVER_TOKEN"
ENV_TOKEN_FILE = "PARAMSERVER_TOKEN_FILE"
ENV_SERVER_NAME = "PARAMSERVER_TLS_SERVER_NAME"
MIN_TOKEN_CHARS = 16


def _read(path: Path | str | None) -> bytes | None:
    return None if path is None or str(path) == "" else Path(path).read_bytes()


def _token_from(path: Path | str | None) -> str | None:
    data = _read(path)
    if data is None:
        return None
    lines = [line.strip() for line in data.decode().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"token file {path} is empty")
    return lines[0]


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves who it is and checks the server: all PEM bytes.

    TLS is on when any field is set; without `ca` the system's roots check the server.
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = field(default=None, repr=False)
    server_name: str | None = None  # the name the server's certificate must carry, if not
                                    # the host dialled (e.g. dialling by an unlisted IP)

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate "
                             "(--tls-cert and --tls-key go together)")

    @classmethod
    def from_files(cls, ca: Path | str | None = None, cert: Path | str | None = None,
                   key: Path | str | None = None, token_file: Path | str | None = None,
                   server_name: str | None = None) -> ClientSecurity | None:
        """None when no file is given (plaintext)."""
        security = cls(_read(ca), _read(cert), _read(key), _token_from(token_file),
                       server_name or None)
        return security if security.tls else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClientSecurity | None:
        """From PARAMSERVER_TLS_CA/_CERT/_KEY, PARAMSERVER_TOKEN(_FILE) and
        PARAMSERVER_TLS_SERVER_NAME; None when none is set (plaintext)."""
        security = cls.from_files(environ.get(ENV_CA), environ.get(ENV_CERT),
                                  environ.get(ENV_KEY), environ.get(ENV_TOKEN_FILE),
                                  environ.get(ENV_SERVER_NAME))
        token = environ.get(ENV_TOKEN)
        if token:
            base = security or cls()
            security = cls(base.ca, base.cert, base.key, token, base.server_name)
        return security

    @property
    def tls(self) -> bool:
        return any(v is not None for v in (self.ca, self.cert, self.token))


class TokenTable:
    """Bearer tokens and whom they stand for. Lookups compare the SHA-256 of the offered
    token with every entry's in constant time (hmac.compare_digest), never stopping early."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        for token in entries:
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"tokens must have at least {MIN_TOKEN_CHARS} characters")
        self._entries = [(hashlib.sha256(t.encode()).digest(), p) for t, p in entries.items()]

    @classmethod
    def parse(cls, text: str, source: str = "token file") -> TokenTable:
        """Lines `ROLE NAME TOKEN` (role: worker, observer or admin); '#' starts a comment."""
        entries: dict[str, Principal] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{source} line {number}: expected 'ROLE NAME TOKEN'")
            role, name, token = parts
            try:
                access = AccessRole(role)
            except ValueError:
                raise ValueError(f"{source} line {number}: role must be one of "
                                 f"{[r.value for r in AccessRole]}") from None
            if token in entries:
                raise ValueError(f"{source} line {number}: a token may stand for one name")
            entries[token] = Principal(name, access)
        return cls(entries)

    def lookup(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry, principal in self._entries:
            if hmac.compare_digest(digest, entry):
                found = principal
        return found

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class ServerSecurity:
    """A server's TLS pair and how it authenticates callers (a client CA or tokens).

    `insecure=True` allows serving a non-loopback address without TLS and authentication.
    """

    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    client_ca: bytes | None = None
    tokens: TokenTable | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.cert is None and (self.client_ca is not None or self.tokens is not None):
            raise ValueError("--tls-client-ca and --auth-tokens need TLS: give --tls-cert "
                             "and --tls-key too")
        if self.client_ca is not None and self.tokens is not None:
            raise ValueError("give one way to authenticate callers: --tls-client-ca (mutual "
                             "TLS) or --auth-tokens (bearer tokens), not both")

    @classmethod
    def from_files(cls, cert: Path | None = None, key: Path | None = None,
                   client_ca: Path | None = None, tokens: Path | None = None,
                   insecure: bool = False) -> ServerSecurity:
        table = (TokenTable.parse(tokens.read_text(), str(tokens))
                 if tokens is not None else None)
        return cls(_read(cert), _read(key), _read(client_ca), table, insecure)

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def authenticates(self) -> bool:
        return self.client_ca is not None or self.tokens is not None
