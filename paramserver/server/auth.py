"""Authentication of every call, and the binding rule (issue #13).

`Authenticator` is a server interceptor: before a method of the parameter-server service
runs (and before a request stream is read) it finds the caller, from the client
certificate under mutual TLS or from the `authorization: Bearer TOKEN` metadata, refuses
UNAUTHENTICATED without one and PERMISSION_DENIED when the caller's role may not call the
method (`security/roles.py`), and hands the method a context whose `caller` is the
`Principal`. The core then checks names and session ownership with it.

`check_binding` refuses to serve a non-loopback address without TLS and authentication
unless `--insecure` was given (as Redis' protected mode does).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import grpc

from paramserver import serde
from paramserver.errors import ParamServerError, Unauthenticated
from paramserver.security.credentials import ServerSecurity
from paramserver.security.roles import AccessRole, Principal, check_method, printable

log = logging.getLogger(__name__)

_KINDS = {  # handler attribute -> factory of a handler of that kind
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
_CERT_CACHE_LIMIT = 1024


class CallerContext:
    """A servicer context that also says who is calling (`caller`); all else is delegated."""

    def __init__(self, context: grpc.ServicerContext, caller: Principal) -> None:
        self._context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def caller_of(context: object) -> Principal | None:
    """The authenticated caller of a call, or None on a server without authentication."""
    caller = getattr(context, "caller", None)
    return caller if isinstance(caller, Principal) else None


class Authenticator(grpc.ServerInterceptor):
    """Authenticates and authorizes every call of the parameter-server service.

    Other services (gRPC health) pass: under mutual TLS their callers still needed a
    certificate for the handshake; health says nothing secret.
    """

    def __init__(self, security: ServerSecurity) -> None:
        if not security.authenticates:
            raise ValueError("an Authenticator needs a client CA or a token table")
        self._security = security
        self._by_cert: dict[bytes, Principal] = {}  # PEM -> principal; a cache

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != serde.SERVICE_NAME:
            return handler
        token = _bearer(handler_call_details.invocation_metadata)
        kind = next(k for k in _KINDS if getattr(handler, k) is not None)
        behaviour = getattr(handler, kind)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                caller = self._authenticate(context, token)
                check_method(caller, method)
            except ParamServerError as error:
                log.info("%s refused (%s) from %s: %s", method, error.code.name,
                         printable(context.peer()), error.message)
                context.abort(error.code, error.message)
                raise AssertionError("unreachable: context.abort raises") from error
            return behaviour(request, CallerContext(context, caller))

        return _KINDS[kind](guarded, request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)

    def _authenticate(self, context: grpc.ServicerContext, token: str | None) -> Principal:
        if self._security.tokens is not None:
            if token is None:
                raise Unauthenticated("this server needs a bearer token: pass --token-file "
                                      "(or set PARAMSERVER_TOKEN)")
            found = self._security.tokens.lookup(token)
            if found is None:
                raise Unauthenticated("the bearer token is not in this server's token file: "
                                      "check --token-file against the server's --auth-tokens")
            return found
        pem = b"".join(context.auth_context().get("x509_pem_cert", []))
        if not pem:  # cannot happen under require_client_auth; refuse all the same
            raise Unauthenticated("this server needs a client certificate signed by its "
                                  "client CA: pass --tls-cert and --tls-key")
        return self._from_certificate(pem)

    def _from_certificate(self, pem: bytes) -> Principal:
        known = self._by_cert.get(pem)
        if known is not None:
            return known
        from paramserver.security.certs import identity_of

        name, unit = identity_of(pem)
        try:
            role = AccessRole(unit)
        except ValueError:
            raise Unauthenticated(f"the client certificate of {printable(name)!r} names no "
                                  "role (its OU must be worker, observer or admin): issue it "
                                  "with `paramserver certs`") from None
        if not name:
            raise Unauthenticated("the client certificate has no common name (identity)")
        if len(self._by_cert) >= _CERT_CACHE_LIMIT:
            self._by_cert.clear()
        principal = self._by_cert[pem] = Principal(name, role)
        return principal


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ")
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` (as given to --host) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, security: ServerSecurity | None) -> None:
    """Refuse (ValueError) to serve a non-loopback `host` without TLS and authentication,
    unless `security.insecure`; then warn loudly."""
    if is_loopback(host) or (security is not None and security.tls
                             and security.authenticates):
        return
    if security is None or not security.insecure:
        raise ValueError(
            f"refusing to serve {host} without TLS and authentication: anyone who can reach "
            "it could read and change the model. Give --tls-cert/--tls-key with "
            "--tls-client-ca (mutual TLS) or --auth-tokens (see `paramserver certs`), bind "
            "127.0.0.1, or pass --insecure on a network you trust")
    log.warning("SERVING %s WITHOUT %s (--insecure): anyone who can reach this port can "
                "read the model, push as any worker and end other workers' sessions", host,
                "AUTHENTICATION" if security.tls else "TLS OR AUTHENTICATION")
