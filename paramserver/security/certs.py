"""A private certificate authority and the certificates of one cluster (issue #13).

Server certificates carry the names clients dial as subject alternative names (DNS names
and IP addresses); client certificates carry who the holder is: the common name is its
identity (a worker's id) and the organizational unit its access role (`worker`,
`observer`, `admin`), which the server reads back in `server/auth.py`. Keys are ECDSA
P-256. Needs the `cryptography` package, imported only when a certificate is made.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramserver.security.roles import AccessRole

DEFAULT_DAYS = 365


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """STEM.crt and STEM.key (0600) in `directory`; returns their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key)
        return cert, key


class CertificateAuthority:
    """A self-signed CA that issues the server and client certificates of one cluster."""

    def __init__(self, name: str = "paramserver cluster CA", days: int = DEFAULT_DAYS) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        builder = _builder(self._name, self._name, self._key.public_key(), days)
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                        critical=True)
        self._cert = builder.sign(self._key, _sha256())

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self._cert)

    def server(self, hosts: list[str], days: int = DEFAULT_DAYS) -> KeyPair:
        """A server certificate valid for each of `hosts` (DNS names or IP addresses)."""
        from cryptography import x509

        names: list[Any] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(hosts[0] if hosts else "paramserver", None, names, days,
                           x509.ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, identity: str, role: AccessRole, days: int = DEFAULT_DAYS,
               not_before: datetime.datetime | None = None) -> KeyPair:
        """A client certificate for `identity` (a worker's id) in `role`.

        `not_before` backdates it (tests make expired certificates with it)."""
        from cryptography import x509

        return self._issue(identity, role, [x509.DNSName(_dns_safe(identity))], days,
                           x509.ExtendedKeyUsageOID.CLIENT_AUTH, not_before)

    def _issue(self, common_name: str, role: AccessRole | None, alt_names: list[Any],
               days: int, usage: Any, not_before: datetime.datetime | None = None) -> KeyPair:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]
        if role is not None:
            attributes.append(x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                 role.value))
        builder = _builder(x509.Name(attributes), self._name, key.public_key(), days,
                           not_before)
        builder = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                         critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(alt_names), critical=False))
        cert = builder.sign(self._key, _sha256())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return KeyPair(_cert_pem(cert), key_pem)


def identity_of(cert_pem: bytes) -> tuple[str, str]:
    """(common name, organizational unit) of a PEM certificate; '' for a missing one."""
    from cryptography import x509

    subject = x509.load_pem_x509_certificate(cert_pem).subject

    def first(oid: Any) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return first(x509.NameOID.COMMON_NAME), first(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)


@dataclass(frozen=True)
class ClusterFiles:
    """Where `write_cluster` put things: the CA, the servers' pair, and one pair per client."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # identity -> (cert, key)


def write_cluster(out: Path, hosts: list[str], clients: dict[str, AccessRole],
                  days: int = DEFAULT_DAYS) -> ClusterFiles:
    """A fresh CA in `out`/ca.crt (its key is not kept: nobody can issue more), one server
    certificate for every host in `hosts`, and a client certificate per identity."""
    authority = CertificateAuthority(days=days)
    out.mkdir(parents=True, exist_ok=True)
    ca = out / "ca.crt"
    ca.write_bytes(authority.cert_pem)
    server_cert, server_key = authority.server(hosts, days).write(out, "server")
    issued = {name: authority.client(name, role, days).write(out, _file_stem(name))
              for name, role in clients.items()}
    return ClusterFiles(ca, server_cert, server_key, issued)


def _builder(subject: Any, issuer: Any, public_key: Any, days: int,
             not_before: datetime.datetime | None = None) -> Any:
    from cryptography import x509

    start = not_before or (datetime.datetime.now(datetime.UTC)
                           - datetime.timedelta(minutes=5))  # clock skew between hosts
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days)))


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _dns_safe(identity: str) -> str:
    """`identity` as a DNS-name SAN (letters, digits, '-' and '.'), for tools that want one."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-"
                   for c in identity)[:63] or "client"


def _file_stem(identity: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-._") else "_" for c in identity)
