"""Server-side fault injection for tests and benchmarks, plugged in through `ServerHooks`.

- `DropReplies`: a server interceptor that applies the chosen pushes (Push streams and Step
  calls) and then answers them with UNAVAILABLE, as if the reply was lost on the network
  (the client's retry must not apply them twice).
- `BreakPushes`: a server interceptor that breaks the chosen pushes' streams after their
  first chunks arrived, as a network failure would (the client sees UNAVAILABLE).
- `crash_on_save(k)`: a checkpoint hook that, on the k-th save, writes half of the temp
  file, flushes it and SIGKILLs its own process, as a power cut or an OOM kill would.
- `python -m tests.server_faults ... serve ARGS` (`faulty_server()` builds the command): a
  server process with these hooks, for tests that need a real process to die.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

import grpc

from paramserver.cli import serve as serve_command
from paramserver.server.app import ServerHooks
from paramserver.server.checkpoint import BeforeWrite

PUSH_METHOD = "/paramserver.v1.ParameterServer/Push"
STEP_METHOD = "/paramserver.v1.ParameterServer/Step"  # a push and its pull (issue #14)


class DropReplies(grpc.ServerInterceptor):
    """Drop the replies of the n-th applied, non-duplicate pushes (1-based, in `which`)."""

    def __init__(self, which: Iterable[int]) -> None:
        self._which = set(which)
        self._count = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is not None and handler_call_details.method == STEP_METHOD:
            return self._dropping_step(handler)
        if handler is None or handler_call_details.method != PUSH_METHOD:
            return handler
        push = handler.stream_unary

        def dropping(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            response = push(request_iterator, context)
            if self._drop_now(response):
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              "test hook: the push was applied, its reply is dropped")
            return response

        return grpc.stream_unary_rpc_method_handler(
            dropping, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _dropping_step(self, handler: Any) -> Any:
        step = handler.unary_unary

        def dropping(request: Any, context: grpc.ServicerContext) -> Any:
            answer = step(request, context)
            if self._drop_now(answer.push):
                context.abort(grpc.StatusCode.UNAVAILABLE,
                              "test hook: the step call's push was applied, its reply dropped")
            return answer

        return grpc.unary_unary_rpc_method_handler(
            dropping, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _drop_now(self, response: Any) -> bool:
        if response.duplicate:
            return False
        with self._lock:
            self._count += 1
            return self._count in self._which


class StreamBroken(grpc.RpcError):
    """What gRPC's request iterator raises when the client's stream breaks."""


class BreakPushes(grpc.ServerInterceptor):
    """Break the n-th pushes (1-based, in `which`, counting every push call) after
    `after_chunks` chunks reached the server, as a network failure mid-push would: the
    server sees its request stream fail, the client gets UNAVAILABLE (and retries)."""

    def __init__(self, which: Iterable[int], after_chunks: int = 1) -> None:
        self._which = set(which)
        self._after = after_chunks
        self._count = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != PUSH_METHOD:
            return handler
        push = handler.stream_unary

        def breaking(request_iterator: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self._count += 1
                broken = self._count in self._which
            if not broken:
                return push(request_iterator, context)
            try:
                return push(self._cut(request_iterator), context)
            except StreamBroken:
                context.abort(grpc.StatusCode.UNAVAILABLE, "test hook: the push stream broke")

        return grpc.stream_unary_rpc_method_handler(
            breaking, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _cut(self, requests: Iterable[Any]) -> Iterable[Any]:
        for index, request in enumerate(requests):
            if index == 1 + self._after:  # the header, then `after` chunks
                raise StreamBroken()
            yield request


def crash_on_save(k: int) -> BeforeWrite:
    """A `before_write` hook that tears the k-th checkpoint save and kills the process."""
    saves = 0

    def before_write(out: IO[bytes], blob: bytes) -> None:
        nonlocal saves
        saves += 1
        if saves == k:
            out.write(blob[: len(blob) // 2])
            out.flush()
            os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    return before_write


def faulty_server(*, drop_replies: Iterable[int] = (), crash_in_checkpoint: int = 0,
                  ) -> tuple[str, ...]:
    """A command that runs `serve ARGS` (append them) with these faults injected; pass it
    as `LocalCluster.start_servers(..., program=...)`."""
    command = [sys.executable, "-m", "tests.server_faults"]
    if drop_replies:
        command += ["--drop-replies", ",".join(str(n) for n in drop_replies)]
    if crash_in_checkpoint:
        command += ["--crash-in-checkpoint", str(crash_in_checkpoint)]
    return tuple(command)


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.server_faults [--drop-replies N,M] [--crash-in-checkpoint K] serve
    ARGS`: the `paramserver serve` command with fault hooks."""
    faults = argparse.ArgumentParser(prog="python -m tests.server_faults")
    faults.add_argument("--drop-replies", default="")
    faults.add_argument("--crash-in-checkpoint", type=int, default=0)
    known, rest = faults.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="paramserver")
    serve_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(rest)
    hooks = ServerHooks(
        interceptors=[DropReplies(int(n) for n in known.drop_replies.split(",") if n)],
        before_checkpoint_write=(crash_on_save(known.crash_in_checkpoint)
                                 if known.crash_in_checkpoint else None))
    return serve_command.run(args, hooks)


if __name__ == "__main__":
    sys.exit(main())
