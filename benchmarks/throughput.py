"""Round throughput of a real parameter server against a bare-gRPC ceiling, on loopback.

A round moves the whole model up (a push of every gradient) and back down (a pull of every
parameter into a preallocated buffer, as the real client does). The ceiling moves the same
wire messages through a bare gRPC stream with no server logic, so ours/ceiling is what our
code costs on top of gRPC. Clients are processes, never threads, on both sides, so they do
not share a GIL with each other or with the server. Throughput is payload bytes moved (up +
down, all clients; 1 GB = 1e9 bytes) over the round's wall time, from the first client's
start to the last client's end.

    python benchmarks/throughput.py [--quick] [--report FILE]

The bare server is this script run with `--bare-server --port-file F`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from google.protobuf import __version__ as protobuf_version

from paramserver import wire
from paramserver.runtime import tune_process
from paramserver.transport import (
    DEFAULT_CHUNK_BYTES,
    channel_options,
    chunk_ranges,
    server_options,
)

Shapes = list[tuple[int, ...]]

MODEL_SHAPES: Shapes = [(4096, 4096), (4096, 1024), (1024, 4096), (4096,)]  # 25.2M f32, 101 MB
QUICK_SHAPES: Shapes = [(1024, 2048), (1024, 1024), (1024, 1024), (1024,)]  # 4.2M f32, 16.8 MB
# Five warm-up rounds: page faults in both processes (fresh 1 MiB message buffers until
# malloc's thresholds settle) only stop after 3-5 rounds, and one round left the ceiling
# measured mid-warm-up, 2-3x below its steady state.
WARMUP, REPS, QUICK_REPS = 5, 5, 2
BUSY_WARNING = 0.1  # cores of CPU used by other processes during a timed stage
SWEEP_CHUNKS = [64 << 10, 256 << 10, 4 << 20]  # ceiling only, 1 client; 1 MiB runs anyway
WORKER_COUNTS = [1, 2]
TIMEOUT_S = 120.0  # every RPC, barrier and start-up wait
BARE_SERVICE = "bench.Bare"


@dataclass
class Result:
    """One configuration: `round_s[i]` spans the first start to the last end of round i."""

    name: str  # "ceiling" or "ours"
    workers: int
    chunk_bytes: int
    bytes_per_round: int  # payload up + down, all clients
    round_s: list[float]
    server_cpu_s: float  # per round
    client_cpu_s: float  # per round, all clients together
    other_cpu_s: float  # per round, every other process on the machine: noise if not ~0
    stage_s: float  # wall time of the timed stage per round (rounds plus barriers)

    def gbps(self) -> list[float]:
        return [self.bytes_per_round / t / 1e9 for t in self.round_s]

    def cpu_share(self) -> float:
        """Server + client CPU over the wall time of all cores: near 1.0 means CPU-bound."""
        cpu = self.server_cpu_s + self.client_cpu_s
        return cpu / (self.stage_s * (os.cpu_count() or 1))

    def summary(self) -> dict[str, Any]:
        gbps = self.gbps()
        return {**asdict(self), "gbps_median": statistics.median(gbps), "gbps_min": min(gbps),
                "gbps_max": max(gbps), "cpu_share": self.cpu_share()}


# ---- payloads and the bare server -----------------------------------------------------------

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


def serve_bare(port_file: Path, shapes: Shapes) -> None:
    """Sink counts what arrives; Source replays pre-built chunks of the size asked for."""
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

    handlers = {
        "Sink": grpc.stream_unary_rpc_method_handler(
            sink, request_deserializer=identity, response_serializer=identity),
        "Source": grpc.unary_stream_rpc_method_handler(
            source, request_deserializer=identity, response_serializer=identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=server_options(),
                         maximum_concurrent_rpcs=256)  # as paramserver.server.app does
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(BARE_SERVICE,
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tune_process()  # the same allocator and GC settings as `paramserver serve`: a fair floor
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    server.wait_for_termination()


# ---- client processes -----------------------------------------------------------------------

def run_rounds(round_trip: Callable[[], None], reps: int, round_barrier: Barrier,
               stage_barrier: Barrier) -> tuple[list[tuple[float, float]], float]:
    """Warm up, then time `reps` rounds; returns (start, end) per round and CPU seconds.

    Clients start every round together (round_barrier); the parent reads the server's CPU
    time at the stage_barrier on either side of the timed stage.
    """
    for _ in range(WARMUP):
        round_barrier.wait(TIMEOUT_S)
        round_trip()
    stage_barrier.wait(TIMEOUT_S)
    cpu_before = time.process_time()  # all threads of this process, gRPC's included
    spans = []
    for _ in range(reps):
        round_barrier.wait(TIMEOUT_S)
        start = time.monotonic()  # CLOCK_MONOTONIC is system-wide: spans compare across pids
        round_trip()
        spans.append((start, time.monotonic()))
    cpu = time.process_time() - cpu_before
    stage_barrier.wait(TIMEOUT_S)
    return spans, cpu


def ceiling_client(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
                   shapes: Shapes, chunks: list[int], reps: int) -> list[Any]:
    """Sink the model up, Source it back down: one stage per chunk size."""
    channel = grpc.insecure_channel(address, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    sink = channel.stream_unary(f"/{BARE_SERVICE}/Sink", request_serializer=identity,
                                response_deserializer=identity)
    source = channel.unary_stream(f"/{BARE_SERVICE}/Source", request_serializer=identity,
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


def ours_worker(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
                shapes: Shapes, reps: int) -> list[Any]:
    """Push every gradient, then pull the next version into preallocated buffers."""
    # Imported here, not at the top: torch takes 1.4 s to import, and the bare server and
    # ceiling clients (this script too) need none of it.
    import torch

    from paramserver.types import ModelLayout, TensorSpec
    from workers.connection import ServerConnection

    torch.set_num_threads(1)
    connection = ServerConnection(address, timeout_s=TIMEOUT_S)
    connection.wait_ready(TIMEOUT_S)
    connection.handshake(f"bench-{index}")
    specs = [TensorSpec(f"t{i}", shape, torch.float32) for i, shape in enumerate(shapes)]
    if index == 0:  # the others start at the first round barrier, after this
        initial = [p.data for p in model_payloads(shapes, 0)]
        connection.register(ModelLayout(tuple(specs)), initial)
    grads = [p.data for p in model_payloads(shapes, index + 1)]
    targets = [np.zeros(p.nbytes, dtype=np.uint8) for p in grads]  # the model's parameters
    version = 0

    def sink(tensor: int, offset: int, data: memoryview) -> None:
        targets[tensor][offset:offset + data.nbytes] = np.frombuffer(data, dtype=np.uint8)

    def round_trip() -> None:
        nonlocal version
        connection.push(version, specs, grads)
        version, _ = connection.pull(version + 1, sink)

    stages = [run_rounds(round_trip, reps, round_barrier, stage_barrier)]
    connection.close()
    return stages


def _child(target: Callable[..., list[Any]], index: int, results: Any, round_barrier: Barrier,
           stage_barrier: Barrier, *args: Any) -> None:
    tune_process()  # every client, ours and the ceiling's, runs with the same settings
    try:
        results.put((index, target(index, round_barrier, stage_barrier, *args), None))
    except BaseException:
        round_barrier.abort()  # wake everyone now rather than at their timeouts
        stage_barrier.abort()
        results.put((index, None, traceback.format_exc()))


def run_clients(name: str, target: Callable[..., list[Any]], args: tuple[Any, ...],
                workers: int, chunks: list[int], model_bytes: int, server_pid: int
                ) -> list[Result]:
    """Start `workers` client processes (spawn) and gather one Result per chunk size."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no gRPC state inherited by fork
    round_barrier, stage_barrier = ctx.Barrier(workers), ctx.Barrier(workers + 1)
    results = ctx.Queue()
    processes = [ctx.Process(target=_child, args=(target, i, results, round_barrier,
                                                  stage_barrier, *args), daemon=True)
                 for i in range(workers)]
    server = psutil.Process(server_pid)
    server_cpu: list[float] = []
    machine_cpu: list[float] = []
    stage_wall: list[float] = []
    try:
        for process in processes:
            process.start()
        try:
            for _ in chunks:
                stage_barrier.wait(TIMEOUT_S)
                before, busy_before = sum(server.cpu_times()[:2]), busy_seconds()
                started = time.monotonic()
                stage_barrier.wait(TIMEOUT_S)
                stage_wall.append(time.monotonic() - started)
                server_cpu.append(sum(server.cpu_times()[:2]) - before)
                machine_cpu.append(busy_seconds() - busy_before)
        except threading.BrokenBarrierError:
            pass  # a client failed; its traceback is on the queue
        outcomes = _collect(results, processes)
    finally:
        for process in [p for p in processes if p.pid is not None]:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
    errors = [error for _, _, error in outcomes if error]
    if errors:  # the cause, not the clients it woke by breaking the barriers
        errors.sort(key=lambda error: "BrokenBarrierError" in error)
        raise RuntimeError(f"{name} client failed:\n{errors[0]}")
    out = []
    for stage, chunk_bytes in enumerate(chunks):
        per_client = [stages[stage] for _, stages, _ in outcomes]
        rounds = zip(*(spans for spans, _ in per_client), strict=True)
        round_s = [max(end for _, end in r) - min(start for start, _ in r) for r in rounds]
        reps = len(round_s)
        clients_cpu = sum(cpu for _, cpu in per_client)
        other = machine_cpu[stage] - server_cpu[stage] - clients_cpu
        out.append(Result(name, workers, chunk_bytes, 2 * workers * model_bytes, round_s,
                          server_cpu[stage] / reps, clients_cpu / reps, max(other, 0.0) / reps,
                          stage_wall[stage] / reps))
    return out


def _collect(results: Any, processes: list[Any]) -> list[tuple[int, Any, str | None]]:
    """One (index, stages, error) per client, by index; raises if one died without a word."""
    outcomes: list[tuple[int, Any, str | None]] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(outcomes) < len(processes):
        try:
            outcomes.append(results.get(timeout=1.0))
        except queue.Empty:
            answered = {index for index, _, _ in outcomes}
            dead = [i for i, p in enumerate(processes)
                    if i not in answered and p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"client {dead or 'all'} exited or hung without a result "
                                   f"(exit codes {[p.exitcode for p in processes]})") from None
    return sorted(outcomes, key=lambda outcome: outcome[0])


def busy_seconds() -> float:
    """CPU seconds all cores have spent running tasks since boot.

    Interrupt time is left out: loopback TCP runs partly in softirq, which no process is
    charged for, so counting it would blame our own traffic on "other processes".
    """
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "steal", 0.0)


# ---- the two servers ------------------------------------------------------------------------

def start_server(args: list[str], run_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start `args` plus `--port-file F` and return the process and its address once bound."""
    port_file, log_path = run_dir / f"{name}.port", run_dir / f"{name}.log"
    port_file.unlink(missing_ok=True)  # a stale file would name a dead port
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*args, "--port-file", str(port_file)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"{name} did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL by pid if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def bare_server_command(shapes: Shapes) -> list[str]:
    """The command that runs the bare server for a model of `shapes` (add --port-file)."""
    return [sys.executable, str(Path(__file__).resolve()), "--bare-server", "--shapes",
            json.dumps(shapes)]


def measure_ceiling(run_dir: Path, shapes: Shapes, reps: int, model_bytes: int) -> list[Result]:
    results = []
    bare, address = start_server(bare_server_command(shapes), run_dir, "bare")
    try:
        for workers in WORKER_COUNTS:
            chunks = [DEFAULT_CHUNK_BYTES, *(SWEEP_CHUNKS if workers == 1 else [])]
            results += run_clients("ceiling", ceiling_client, (address, shapes, chunks, reps),
                                   workers, chunks, model_bytes, bare.pid)
    finally:
        stop_server(bare)
    return results


def measure_ours(run_dir: Path, shapes: Shapes, reps: int, model_bytes: int) -> list[Result]:
    results = []
    for workers in WORKER_COUNTS:
        server, address = start_server(
            [sys.executable, "-m", "paramserver.cli.main", "serve", "--port", "0", "--mode",
             "sync", "--workers", str(workers), "--lr", "0.01", "--momentum", "0", "--grace",
             "1"], run_dir, f"ps-w{workers}")
        try:
            results += run_clients("ours", ours_worker, (address, shapes, reps), workers,
                                   [DEFAULT_CHUNK_BYTES], model_bytes, server.pid)
        finally:
            stop_server(server)
    return results


# ---- report ---------------------------------------------------------------------------------

def print_table(results: list[Result]) -> None:
    """GB/s over rounds; then CPU ms per round of the server, the clients and everything else,
    and the share of all cores that server and clients kept busy."""
    print(f"{'config':<8} {'W':>2} {'chunk':>8} {'round ms':>9} {'GB/s med':>9} {'min':>6} "
          f"{'max':>6} | {'srv ms':>6} {'cli ms':>6} {'other':>5} | {'busy':>4}")
    for r in sorted(results, key=lambda r: (r.name, r.workers, r.chunk_bytes)):
        gbps = r.gbps()
        print(f"{r.name:<8} {r.workers:>2} {r.chunk_bytes >> 10:>4} KiB "
              f"{1e3 * statistics.median(r.round_s):>9.1f} {statistics.median(gbps):>9.3f} "
              f"{min(gbps):>6.3f} {max(gbps):>6.3f} | {1e3 * r.server_cpu_s:>6.0f} "
              f"{1e3 * r.client_cpu_s:>6.0f} {1e3 * r.other_cpu_s:>5.0f} | "
              f"{100 * r.cpu_share():>3.0f}%")
    noisy = [r for r in results if r.other_cpu_s / r.stage_s > BUSY_WARNING]
    if noisy:
        print(f"WARNING: other processes used more than {BUSY_WARNING} cores during "
              f"{len(noisy)} configurations; these figures are not clean")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MB model, 2 reps (a smoke test)")
    parser.add_argument("--report", type=Path, help="write every figure here as JSON")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else MODEL_SHAPES
    if args.bare_server:
        shapes = [tuple(s) for s in args.shapes] if args.shapes else shapes
        if args.port_file is None:
            parser.error("--bare-server needs --port-file")
        serve_bare(args.port_file, shapes)
        return 0
    reps = QUICK_REPS if args.quick else REPS
    model_bytes = 4 * sum(math.prod(s) for s in shapes)
    print(f"model {len(shapes)} tensors, {model_bytes / 1e6:.1f} MB float32; {WARMUP} warm-up + "
          f"{reps} rounds; round = push + pull of the whole model per client; grpc "
          f"{grpc.__version__}, protobuf {protobuf_version}, {os.cpu_count()} cpus", flush=True)
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ps-bench-") as tmp:
        results = measure_ceiling(Path(tmp), shapes, reps, model_bytes)
        results += measure_ours(Path(tmp), shapes, reps, model_bytes)
    print_table(results)

    def median_gbps(name: str, workers: int) -> float:
        return next(statistics.median(r.gbps()) for r in results if r.name == name
                    and r.workers == workers and r.chunk_bytes == DEFAULT_CHUNK_BYTES)

    ratios = {w: median_gbps("ours", w) / median_gbps("ceiling", w) for w in WORKER_COUNTS}
    print("throughput ours/ceiling (1 MiB chunks, median GB/s): " + "; ".join(
        f"W={w} {median_gbps('ours', w):.3f}/{median_gbps('ceiling', w):.3f} = {ratios[w]:.2f}"
        for w in WORKER_COUNTS) + f"  [{time.monotonic() - wall:.0f} s]")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({
            "transport": "grpc loopback tcp", "grpcio": grpc.__version__,
            "protobuf": protobuf_version, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "chunk_bytes": DEFAULT_CHUNK_BYTES,
            "model_bytes": model_bytes, "shapes": shapes, "warmup": WARMUP, "reps": reps,
            "ratio_ours_over_ceiling": {str(w): r for w, r in ratios.items()},
            "results": [r.summary() for r in results],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
