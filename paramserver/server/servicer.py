"""Thin gRPC shell over ParameterServerCore: decode, call the handler, map errors.

Streaming methods use the hand-written chunk (de)serializers from `paramserver.serde`;
the unary ones use the generated messages. Every error is mapped to a status code in
`_abort_on_error`, the one place that does so. Fault injection for tests wraps this with a
server interceptor (`app.ServerHooks`), never from inside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from paramserver import __version__, serde
from paramserver.errors import ParamServerError
from paramserver.server.core import ParameterServerCore

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


class ParameterServerServicer:
    """Implements paramserver.v1.ParameterServer on top of a ParameterServerCore."""

    def __init__(self, core: ParameterServerCore) -> None:
        self.core = core

    def Handshake(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Handshake"):
            session = self.core.handshake(
                request.worker_id,
                serde.role_from_proto(request.role),
                [serde.codec_from_proto(c) for c in request.push_codecs],
                [serde.codec_from_proto(c) for c in request.pull_codecs],
            )
            return serde.session_to_proto(session, __version__)

    def Register(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Register"):
            registration = self.core.register(request_iterator)
            return serde.RegisterResponse(created=registration.created,
                                          version=registration.version,
                                          layout=serde.layout_to_proto(registration.layout))

    def Push(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Push"):
            return serde.push_result_to_proto(self.core.push(request_iterator))

    def Pull(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        with _abort_on_error(context, "Pull"):
            remaining = context.time_remaining()
            timeout = self.core.config.max_wait_s if remaining is None else max(remaining, 0.0)
            yield from self.core.pull(request.session_id, request.min_version,
                                      list(request.tensors), timeout)

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Status"):
            return serde.status_to_proto(self.core.status(request.include_state_hash))

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Heartbeat"):
            return serde.HeartbeatResponse(version=self.core.heartbeat(request.session_id))

    def JoinRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "JoinRound"):
            remaining = context.time_remaining()
            timeout = self.core.config.max_wait_s if remaining is None else max(remaining, 0.0)
            joined = self.core.join_round(request.session_id, request.round, timeout)
            return serde.JoinRoundResponse(round=joined.round, sampled=joined.sampled,
                                           sampled_count=joined.sampled_count)

    def Leave(self, request: Any, context: grpc.ServicerContext) -> Any:
        with _abort_on_error(context, "Leave"):
            self.core.leave(request.session_id)
            return serde.LeaveResponse()


def generic_handler(servicer: ParameterServerServicer) -> grpc.GenericRpcHandler:
    """Method handlers with the fast-path (de)serializers for the streaming methods."""
    unary = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in serde.UNARY_TYPES.items()
    }
    handlers = {
        **unary,
        "Register": grpc.stream_unary_rpc_method_handler(
            servicer.Register,
            request_deserializer=serde.decode_register_request,
            response_serializer=serde.RegisterResponse.SerializeToString,
        ),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.Push,
            request_deserializer=serde.decode_push_request,
            response_serializer=serde.PushResponse.SerializeToString,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=serde.PullRequest.FromString,
            response_serializer=serde.identity,
        ),
    }
    return grpc.method_handlers_generic_handler(serde.SERVICE_NAME, handlers)
