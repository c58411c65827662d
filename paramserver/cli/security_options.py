"""The TLS and authentication flags of the commands, and what they turn into (issue #13).

Servers: `--tls-cert/--tls-key` (TLS), plus `--tls-client-ca` (mutual TLS) or
`--auth-tokens` (bearer tokens), and `--insecure` to serve a non-loopback address without
them. Clients: `--tls-ca`, `--tls-cert/--tls-key` or `--token-file`; without flags they
read PARAMSERVER_TLS_CA/_CERT/_KEY and PARAMSERVER_TOKEN(_FILE) from the environment.
`launch --tls` and `federated --tls` make a throwaway CA for their local cluster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paramserver.security.certs import ClusterFiles, write_cluster
from paramserver.security.credentials import ClientSecurity, ServerSecurity
from paramserver.security.roles import AccessRole

LAUNCHER = "launcher"  # the admin identity a local cluster's own probes use


def add_server_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument("--tls-cert", type=Path, help="this server's certificate (PEM): TLS")
    group.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    group.add_argument("--tls-client-ca", type=Path,
                       help="mutual TLS: callers need a certificate this CA signed; its CN "
                            "is their identity, its OU their role (worker, observer, admin)")
    group.add_argument("--auth-tokens", type=Path,
                       help="bearer tokens instead of client certificates: lines "
                            "'ROLE NAME TOKEN' (needs --tls-cert)")
    group.add_argument("--insecure", action="store_true",
                       help="serve a non-loopback --host without TLS and authentication "
                            "(anyone who reaches the port controls the job)")


def server_security_from_args(args: argparse.Namespace) -> ServerSecurity | None:
    """None for plaintext without authentication (and no --insecure)."""
    if not any((args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_tokens,
                args.insecure)):
        return None
    return ServerSecurity.from_files(args.tls_cert, args.tls_key, args.tls_client_ca,
                                     args.auth_tokens, args.insecure)


def add_client_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "security", "without these flags: PARAMSERVER_TLS_CA, PARAMSERVER_TLS_CERT, "
                    "PARAMSERVER_TLS_KEY, PARAMSERVER_TOKEN(_FILE) from the environment")
    group.add_argument("--tls-ca", type=Path,
                       help="the CA that signed the servers' certificates: TLS")
    group.add_argument("--tls-cert", type=Path, help="this client's certificate: mutual TLS")
    group.add_argument("--tls-key", type=Path, help="its private key")
    group.add_argument("--token-file", type=Path,
                       help="a file holding this client's bearer token (TLS-only servers)")
    group.add_argument("--tls-server-name",
                       help="the name the servers' certificates carry, when it is not the "
                            "host dialled")


def client_security_from_args(args: argparse.Namespace) -> ClientSecurity | None:
    """The flags' credentials; None when no flag is given (then: the environment)."""
    return ClientSecurity.from_files(args.tls_ca, args.tls_cert, args.tls_key,
                                     args.token_file, args.tls_server_name)


def make_local_cluster_tls(directory: Path, clients: dict[str, AccessRole]) -> ClusterFiles:
    """A throwaway CA in `directory`, a server certificate for 127.0.0.1 and localhost,
    one client certificate per name in `clients`, and the launcher's own (admin)."""
    return write_cluster(directory, ["127.0.0.1", "localhost"],
                         {**clients, LAUNCHER: AccessRole.ADMIN}, days=7)


def server_flags(files: ClusterFiles | None) -> list[str]:
    if files is None:
        return []
    return ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
            "--tls-client-ca", str(files.ca)]


def client_flags(files: ClusterFiles | None, name: str) -> list[str]:
    if files is None:
        return []
    cert, key = files.clients[name]
    return ["--tls-ca", str(files.ca), "--tls-cert", str(cert), "--tls-key", str(key)]


def client_security(files: ClusterFiles | None, name: str = LAUNCHER) -> ClientSecurity | None:
    if files is None:
        return None
    cert, key = files.clients[name]
    return ClientSecurity.from_files(files.ca, cert, key)
