"""`paramserver certs`: a private CA and the certificates (or tokens) of one cluster."""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from paramserver.security.certs import write_cluster
from paramserver.security.roles import AccessRole


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "certs", help="make a CA and the certificates of a cluster (mutual TLS)",
        description="Write ca.crt, server.crt/.key valid for every --servers host, and one "
                    "client certificate per identity: worker-0..N-1 (role worker), "
                    "--observers (role observer) and --admins (role admin). The CA's key is "
                    "not kept. Serve with --tls-cert server.crt --tls-key server.key "
                    "--tls-client-ca ca.crt; run clients with --tls-ca ca.crt --tls-cert "
                    "NAME.crt --tls-key NAME.key. --tokens also writes a token file for "
                    "--auth-tokens and NAME.token per identity (TLS-only setups).")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--servers", default="127.0.0.1,localhost",
                        help="host names and IPs the servers are dialled by, comma-separated")
    parser.add_argument("--workers", type=int, default=0, help="worker-0..N-1 certificates")
    parser.add_argument("--worker-ids", default="",
                        help="more worker identities, comma-separated")
    parser.add_argument("--observers", default="observer",
                        help="observer identities, comma-separated (observer)")
    parser.add_argument("--admins", default="admin", help="admin identities (admin)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (365)")
    parser.add_argument("--tokens", action="store_true",
                        help="also write bearer tokens: tokens (for the server) and NAME.token")
    parser.set_defaults(func=run)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    clients = {f"worker-{i}": AccessRole.WORKER for i in range(args.workers)}
    clients.update({name: AccessRole.WORKER for name in _names(args.worker_ids)})
    clients.update({name: AccessRole.OBSERVER for name in _names(args.observers)})
    clients.update({name: AccessRole.ADMIN for name in _names(args.admins)})
    files = write_cluster(args.out, _names(args.servers), clients, args.days)
    if args.tokens:
        lines = []
        for name, role in clients.items():
            token = secrets.token_urlsafe(32)
            lines.append(f"{role.value} {name} {token}\n")
            _write_private(args.out / f"{files.clients[name][0].stem}.token", token + "\n")
        _write_private(args.out / "tokens", "".join(lines))
    print(f"wrote {files.ca}, {files.server_cert} (for {args.servers}) and "
          f"{len(clients)} client certificates to {args.out}")
    return 0


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
