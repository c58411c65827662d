"""The bare gRPC floor: a server with no parameter-server logic, moving our very messages.

Sink counts the chunk messages a client streams up; Source streams pre-built chunks back.
The chunks are the exact PushRequest/PullResponse messages our client and server put on the
wire, with the same channel and server options, so ours/bare is what our code costs on top
of gRPC. Used by `benchmarks.throughput` (the ceiling) and the suite's floor.

    python -m benchmarks.bare_grpc --port-file F [--shapes JSON]   (started by `command`)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.rounds import TIMEOUT_S, run_rounds
from paramserver import wire
from paramserver.process_tuning import tune_process
from paramserver.transport import channel_options, chunk_ranges, server_options

Shapes = list[tuple[int, ...]]

SERVICE = "bench.Bare"


def model_payloads(shapes: Shapes, seed: int) -> list[np.ndarray]:
    """Raw float32 bytes per tensor (uint8 views), small normal values."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(math.prod(s), dtype=np.float32) * 0.01).view(np.uint8)
            for s in shapes]


def chunk_messages(payloads: list[np.ndarray], chunk_bytes: int) -> list[bytes]:
    """The exact PushRequest/PullResponse chunk messages our client and server put on the wire."""
    return [wire.encode_chunk(index, start, payload.data[start:end])
            for index, payload in enumerate(payloads)
            for start, end in chunk_ranges(payload.nbytes, chunk_bytes)]


def identity(message: bytes) -> bytes:
    return message


def serve(port_file: Path, shapes: Shapes, parties: int = 2) -> None:
    """Sink counts what arrives; Source replays pre-built chunks of the size asked for; Echo
    answers a unary request with its own bytes; Meet does too, once `parties` calls have
    arrived (the floor of a sync step in one call: the calls of a step meet on the server)."""
    lock = threading.Lock()  # guards `cache`: concurrent Sources may ask for a new size
    cache: dict[int, list[bytes]] = {}

    def sink(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"%d" % sum(len(m) for m in requests)

    def source(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        chunk_bytes = int(request)
        with lock:
            if chunk_bytes not in cache:
                cache.clear()  # one size at a time keeps the process at one model's bytes
                cache[chunk_bytes] = chunk_messages(model_payloads(shapes, 0), chunk_bytes)
            messages = cache[chunk_bytes]
        yield from messages

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    meeting = threading.Condition()  # guards `arrived` and `rounds`
    arrived, rounds = [0], [0]

    def meet(request: bytes, context: grpc.ServicerContext) -> bytes:
        with meeting:
            mine = rounds[0]
            arrived[0] += 1
            if arrived[0] == parties:
                arrived[0], rounds[0] = 0, mine + 1
                meeting.notify_all()
            else:
                meeting.wait_for(lambda: rounds[0] != mine, timeout=TIMEOUT_S)
        return request

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=identity, response_serializer=identity),
        "Meet": grpc.unary_unary_rpc_method_handler(
            meet, request_deserializer=identity, response_serializer=identity),
        "Sink": grpc.stream_unary_rpc_method_handler(
            sink, request_deserializer=identity, response_serializer=identity),
        "Source": grpc.unary_stream_rpc_method_handler(
            source, request_deserializer=identity, response_serializer=identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=server_options(),
                         maximum_concurrent_rpcs=256)  # as paramserver.server.app does
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tune_process()  # the same allocator and GC settings as `paramserver serve`: a fair floor
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    server.wait_for_termination()


def command(shapes: Shapes, parties: int = 2) -> list[str]:
    """The command that runs the bare server for a model of `shapes` (add --port-file);
    `parties`: the calls that meet in each round of Meet."""
    return [sys.executable, "-m", "benchmarks.bare_grpc", "--shapes", json.dumps(shapes),
            "--parties", str(parties)]


def client(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
           shapes: Shapes, chunks: list[int], reps: int) -> list[Any]:
    """Sink the model up, Source it back down: one stage of rounds per chunk size."""
    channel = grpc.insecure_channel(address, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    sink = channel.stream_unary(f"/{SERVICE}/Sink", request_serializer=identity,
                                response_deserializer=identity)
    source = channel.unary_stream(f"/{SERVICE}/Source", request_serializer=identity,
                                  response_deserializer=identity)
    payloads = model_payloads(shapes, index + 1)
    stages = []
    for chunk_bytes in chunks:
        messages = chunk_messages(payloads, chunk_bytes)

        def round_trip(messages: list[bytes] = messages, chunk_bytes: int = chunk_bytes) -> None:
            sink(iter(messages), timeout=TIMEOUT_S)
            for _ in source(b"%d" % chunk_bytes, timeout=TIMEOUT_S):
                pass  # a bare stream: receiving is the whole job

        stages.append(run_rounds(round_trip, reps, round_barrier, stage_barrier))
    channel.close()
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--shapes", type=json.loads, required=True, help="JSON list of shapes")
    parser.add_argument("--parties", type=int, default=2, help="calls per round of Meet")
    args = parser.parse_args()
    serve(args.port_file, [tuple(s) for s in args.shapes], args.parties)
    return 0


if __name__ == "__main__":
    sys.exit(main())
