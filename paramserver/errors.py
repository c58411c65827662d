"""Errors with a gRPC status attached, raised by network-free handlers.

Handlers raise these; the servicer maps them to `context.abort(code, message)` in one place
(`paramserver.server.servicer`), and the client maps a failed call back to a
`ParamServerError` of the same code so user code can catch one exception family.
"""

from __future__ import annotations

import grpc


class ParamServerError(Exception):
    """An error that carries the gRPC status code a caller should see."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(ParamServerError):
    """The request itself is malformed: wrong shape or dtype, truncated or oversize payload."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ParamServerError):
    """The request is well-formed but the server is not in a state to accept it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SessionExpired(FailedPrecondition):
    """The session is gone (its worker was evicted, or the server restarted): handshake again.

    Sent as FAILED_PRECONDITION whose message starts with SESSION_EXPIRED, so that clients
    in any language can tell it from other precondition failures.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        if not message.startswith(SESSION_EXPIRED):
            message = SESSION_EXPIRED + message
        super().__init__(message, code)


SESSION_EXPIRED = "session expired: "
# In the FAILED_PRECONDITION a first handshake gets while a live session holds its worker id
# (a duplicate RANK, or a restarted rank's previous process whose lease has not run out):
# clients match it to wait for that lease (`ServerConnection.handshake(claim_wait_s=)`).
WORKER_ID_HELD = "is already attached by a live process"


class Aborted(ParamServerError):
    """The push lost a race it cannot win: its step closed without it, its sequence was
    already used, or its gradient is staler than the bound. Pull and go on."""

    code = grpc.StatusCode.ABORTED


class StepDiscarded(Aborted):
    """A sync step's aggregate was discarded: a push failed after adding to it (issue #14,
    in-place aggregation). The worker still holds its gradient: push the same step again.

    Sent as ABORTED whose message starts with STEP_DISCARDED, so that clients can tell it
    from the other ABORTED answers (which drop the push)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        if not message.startswith(STEP_DISCARDED):
            message = STEP_DISCARDED + message
        super().__init__(message, code)


STEP_DISCARDED = "step discarded: "


class NotFound(ParamServerError):
    """The request names something the server does not have (tensor, session)."""

    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(ParamServerError):
    """The call carries no valid credential (no token, an unknown token, a certificate the
    server's CA did not sign): see the message for which."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ParamServerError):
    """The caller is known, but its role or identity does not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ParamServerError):
    """The server is full (e.g. a synchronous job already has all its workers)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ParamServerError):
    """A bounded wait ran out."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ParamServerError):
    """The server is shutting down or cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class OutOfRange(ParamServerError):
    """A value outside its valid range (a row id outside a table)."""

    code = grpc.StatusCode.OUT_OF_RANGE



_PREFIXES = {SessionExpired: SESSION_EXPIRED, StepDiscarded: STEP_DISCARDED}


def from_rpc_error(error: grpc.RpcError) -> ParamServerError:
    """Turn a failed gRPC call into a ParamServerError carrying the same code and details."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    for prefixed in (SessionExpired, StepDiscarded):  # told apart by their message's start
        if code == prefixed.code and (details or "").startswith(_PREFIXES[prefixed]):
            return prefixed(details)
    for cls in (InvalidArgument, FailedPrecondition, NotFound, ResourceExhausted,
                DeadlineExceeded, Unavailable, Aborted, Unauthenticated, PermissionDenied, OutOfRange):
        if cls.code == code:
            return cls(details or code.name)
    return ParamServerError(details or str(code), code)
