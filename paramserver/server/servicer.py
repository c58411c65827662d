"""Thin gRPC shell over ParameterServerCore: decode, call the handler, map errors.

Every method's (de)serializers come from `serde.RPCS` (the streaming ones take the
hand-written chunk fast path). Every error is mapped to a status code in
`_abort_on_error`, the one place that does so. Fault injection for tests wraps this with a
server interceptor (`app.ServerHooks`), never from inside it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import NoReturn, TypeVar

import grpc

from paramserver import serde
from paramserver.errors import InvalidArgument, ParamServerError, ResourceExhausted
from paramserver.federated.secagg.protocol import SecAggReply, SecAggRequest
from paramserver.server.auth import caller_of
from paramserver.server.core import ParameterServerCore
from paramserver.server.step_call import serve_step
from paramserver.status import ServerStatus
from paramserver.step_call import StepAnswer, StepCall
from paramserver.tables import DeclareTables, RowPullRequest, TablePlan
from paramserver.types import (
    HandshakeRequest,
    PullRequest,
    PushResult,
    Registration,
    RoundJoin,
    RoundRequest,
    Session,
    StateUpload,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, error: ParamServerError) -> NoReturn:
    context.abort(error.code, error.message)
    raise AssertionError("unreachable: context.abort raises")


@contextlib.contextmanager
def _abort_on_error(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    try:
        yield
    except ParamServerError as error:
        log.info("%s refused (%s): %s", method, error.code.name, error.message)
        _abort(context, error)
    except grpc.RpcError:
        raise  # the client went away mid-stream; nothing to answer
    except Exception as error:  # a bug: say so instead of a bare INTERNAL
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {error!r}")


def _parsed(request: T) -> T:
    """A unary request record; InvalidArgument when its bytes did not parse,
    ResourceExhausted when there were too many of them."""
    if isinstance(request, serde.MalformedMessage):
        raise (ResourceExhausted if request.too_large else InvalidArgument)(request.reason)
    return request


@contextlib.contextmanager
def _cancellation(context: grpc.ServicerContext,
                  core: ParameterServerCore) -> Iterator[threading.Event]:
    """An event set when the call ends (a client that cancels, or goes away), after which
    the core wakes its long polls: a cancelled wait frees its thread at once (issue #13).
    A call that ends after its handler left this block wakes nobody: it waits no more, and
    waking every long poll at the end of every call cost each waiting sync step a spurious
    wake-up per call (issue #14)."""
    ended, handled = threading.Event(), threading.Event()

    def on_end() -> None:
        ended.set()
        if not handled.is_set():
            core.wake()

    if not context.add_callback(on_end):  # already over
        ended.set()
    try:
        yield ended
    finally:
        handled.set()


def _time_left(context: grpc.ServicerContext, ceiling: float) -> float:
    remaining = context.time_remaining()
    return ceiling if remaining is None else max(min(remaining, ceiling), 0.0)


class ParameterServerServicer:
    """Implements paramserver.v1.ParameterServer on top of a ParameterServerCore.

    Requests arrive as records and answers leave as records: `serde.RPCS` converts both.
    """

    def __init__(self, core: ParameterServerCore) -> None:
        self.core = core

    def Handshake(self, request: HandshakeRequest, context: grpc.ServicerContext) -> Session:
        with _abort_on_error(context, "Handshake"):
            request = _parsed(request)
            return self.core.handshake(request.worker_id, request.role,
                                       list(request.push_codecs), list(request.pull_codecs),
                                       request.held_version, request.world_size,
                                       caller=caller_of(context),
                                       secure_aggregation=request.secure_aggregation,
                                       shm=request.shm)

    def Register(self, request_iterator: Iterator[object],
                 context: grpc.ServicerContext) -> Registration:
        with _abort_on_error(context, "Register"):
            return self.core.register(request_iterator, caller=caller_of(context))

    def Push(self, request_iterator: Iterator[object],
             context: grpc.ServicerContext) -> PushResult:
        with _abort_on_error(context, "Push"):
            return self.core.push(request_iterator, caller=caller_of(context))

    def Pull(self, request: PullRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with _abort_on_error(context, "Pull"), _cancellation(context, self.core) as ended:
            request = _parsed(request)
            yield from self.core.pull(request.session_id, request.min_version,
                                      list(request.tensors),
                                      _time_left(context, self.core.config.max_wait_s),
                                      ended, request.held_version, caller=caller_of(context),
                                      shm_segment=request.shm_segment)

    def Status(self, include_state_hash: bool, context: grpc.ServicerContext) -> ServerStatus:
        with _abort_on_error(context, "Status"):
            return self.core.status(_parsed(include_state_hash), caller=caller_of(context))

    def Heartbeat(self, session_id: str, context: grpc.ServicerContext) -> int:
        with _abort_on_error(context, "Heartbeat"):
            return self.core.heartbeat(_parsed(session_id), caller=caller_of(context))

    def JoinRound(self, request: RoundRequest, context: grpc.ServicerContext) -> RoundJoin:
        with _abort_on_error(context, "JoinRound"), _cancellation(context, self.core) as ended:
            request = _parsed(request)
            return self.core.join_round(request.session_id, request.round,
                                        _time_left(context, self.core.config.max_wait_s),
                                        ended, caller=caller_of(context), close=request.close)

    def Leave(self, session_id: str, context: grpc.ServicerContext) -> None:
        with _abort_on_error(context, "Leave"):
            self.core.leave(_parsed(session_id), caller=caller_of(context))

    def GetState(self, session_id: str, context: grpc.ServicerContext) -> bytes:
        with _abort_on_error(context, "GetState"):
            return self.core.get_state(_parsed(session_id), caller=caller_of(context))

    def SetState(self, upload: StateUpload, context: grpc.ServicerContext) -> int:
        with _abort_on_error(context, "SetState"):
            upload = _parsed(upload)
            return self.core.set_state(upload.session_id, upload.state,
                                       caller=caller_of(context))

    # ---- row-sparse tables (issue #16) ---------------------------------------------------

    def DeclareTables(self, request: DeclareTables,
                      context: grpc.ServicerContext) -> tuple[bool, TablePlan]:
        with _abort_on_error(context, "DeclareTables"):
            return self.core.tables.declare(_parsed(request), caller=caller_of(context))

    def PullRows(self, request: RowPullRequest,
                 context: grpc.ServicerContext) -> Iterator[bytes]:
        with _abort_on_error(context, "PullRows"), _cancellation(context, self.core) as ended:
            request = _parsed(request)
            yield from self.core.tables.pull(
                request, _time_left(context, self.core.config.max_wait_s), ended,
                caller=caller_of(context))

    def PushRows(self, request_iterator: Iterator[object],
                 context: grpc.ServicerContext) -> PushResult:
        with _abort_on_error(context, "PushRows"):
            return self.core.tables.push(request_iterator, caller=caller_of(context))
    def SecureAggregate(self, request: SecAggRequest,
                        context: grpc.ServicerContext) -> SecAggReply:
        with (_abort_on_error(context, "SecureAggregate"),
              _cancellation(context, self.core) as ended):
            request = _parsed(request)
            return self.core.secure_aggregate(request,
                                              _time_left(context, self.core.config.max_wait_s),
                                              ended, caller=caller_of(context))

    def Step(self, request: StepCall, context: grpc.ServicerContext) -> StepAnswer:
        """A small model's push and pull in one call (issue #14; `step_call.py`)."""
        with _abort_on_error(context, "Step"), _cancellation(context, self.core) as ended:
            return serve_step(self.core, _parsed(request),
                              _time_left(context, self.core.config.max_wait_s), ended,
                              caller=caller_of(context))


_HANDLER_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
}


def generic_handler(servicer: ParameterServerServicer) -> grpc.GenericRpcHandler:
    """One method handler per RPC, with serde's (de)serializers between bytes and records."""
    handlers = {
        name: _HANDLER_KINDS[serde.STREAMING.get(name, "unary_unary")](
            getattr(servicer, name),
            request_deserializer=rpc.request_from_bytes,
            response_serializer=rpc.response_to_bytes,
        )
        for name, rpc in serde.RPCS.items()
    }
    return grpc.method_handlers_generic_handler(serde.SERVICE_NAME, handlers)
