"""Round throughput of a real parameter server against a bare-gRPC ceiling, on loopback.

A round moves the whole model up (a push of every gradient) and back down (a pull of every
parameter into a preallocated buffer, as the real client does). The ceiling moves the same
wire messages through a bare gRPC stream with no server logic (`benchmarks.bare_grpc`), so
ours/ceiling is what our code costs on top of gRPC. Clients are processes
(`benchmarks.rounds`). Throughput is payload bytes moved (up + down, all clients; 1 GB = 1e9
bytes) over the round's wall time, from the first client's start to the last client's end.

    python -m benchmarks.throughput [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import __version__ as protobuf_version

from benchmarks import bare_grpc, harness
from benchmarks.rounds import TIMEOUT_S, WARMUP, Result, run_clients, run_rounds
from paramserver.transport import DEFAULT_CHUNK_BYTES

Shapes = list[tuple[int, ...]]

MODEL_SHAPES: Shapes = [(4096, 4096), (4096, 1024), (1024, 4096), (4096,)]  # 25.2M f32, 101 MB
QUICK_SHAPES: Shapes = [(1024, 2048), (1024, 1024), (1024, 1024), (1024,)]  # 4.2M f32, 16.8 MB
REPS, QUICK_REPS = 5, 2  # timed rounds, after rounds.WARMUP warm-up rounds
BUSY_WARNING = 0.1  # cores of CPU used by other processes during a timed stage
SWEEP_CHUNKS = [64 << 10, 256 << 10, 4 << 20]  # ceiling only, 1 client; 1 MiB runs anyway
WORKER_COUNTS = [1, 2]


def ours_worker(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
                shapes: Shapes, reps: int) -> list[Any]:
    """Push every gradient, then pull the next version into preallocated buffers."""
    # Imported here, not at the top: torch takes 1.4 s to import, and the bare server and
    # ceiling clients need none of it.
    import torch

    from paramserver.types import ModelLayout, TensorSpec
    from workers.connection import ServerConnection

    torch.set_num_threads(1)
    connection = ServerConnection(address, timeout_s=TIMEOUT_S)
    connection.wait_ready(TIMEOUT_S)
    connection.handshake(f"bench-{index}")
    specs = [TensorSpec(f"t{i}", shape, torch.float32) for i, shape in enumerate(shapes)]
    if index == 0:  # the others start at the first round barrier, after this
        initial = [p.data for p in bare_grpc.model_payloads(shapes, 0)]
        connection.register(ModelLayout(tuple(specs)), initial)
    grads = [p.data for p in bare_grpc.model_payloads(shapes, index + 1)]
    targets = [np.zeros(p.nbytes, dtype=np.uint8) for p in grads]  # the model's parameters
    version = 0

    def sink(tensor: int, offset: int, data: memoryview) -> None:
        targets[tensor][offset:offset + data.nbytes] = np.frombuffer(data, dtype=np.uint8)

    def round_trip() -> None:
        nonlocal version
        connection.push(version, specs, grads)
        version = connection.pull(version + 1, sink).version

    stages = [run_rounds(round_trip, reps, round_barrier, stage_barrier)]
    connection.close()
    return stages


def measure_ceiling(run_dir: Path, shapes: Shapes, reps: int, model_bytes: int) -> list[Result]:
    results = []
    with harness.serving(bare_grpc.command(shapes), run_dir, "bare") as bare:
        for workers in WORKER_COUNTS:
            chunks = [DEFAULT_CHUNK_BYTES, *(SWEEP_CHUNKS if workers == 1 else [])]
            results += run_clients("ceiling", bare_grpc.client,
                                   (bare.address, shapes, chunks, reps), workers, chunks,
                                   model_bytes, bare.pid)
    return results


def measure_ours(run_dir: Path, shapes: Shapes, reps: int, model_bytes: int) -> list[Result]:
    results = []
    for workers in WORKER_COUNTS:
        with harness.serving(
                [*harness.CLI, "serve", "--port", "0", "--mode", "sync", "--workers",
                 str(workers), "--lr", "0.01", "--momentum", "0", "--grace", "1"],
                run_dir, f"ps-w{workers}") as server:
            results += run_clients("ours", ours_worker, (server.address, shapes, reps),
                                   workers, [DEFAULT_CHUNK_BYTES], model_bytes, server.pid)
    return results


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
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/throughput-*.json)")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else MODEL_SHAPES
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
    harness.write_report(harness.report_path("throughput", args.report), {
        "transport": "grpc loopback tcp", "grpcio": grpc.__version__,
        "protobuf": protobuf_version, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "chunk_bytes": DEFAULT_CHUNK_BYTES,
        "model_bytes": model_bytes, "shapes": shapes, "warmup": WARMUP, "reps": reps,
        "ratio_ours_over_ceiling": {str(w): r for w, r in ratios.items()},
        "results": [r.summary() for r in results],
    })
    print("throughput ours/ceiling (1 MiB chunks, median GB/s): " + "; ".join(
        f"W={w} {median_gbps('ours', w):.3f}/{median_gbps('ceiling', w):.3f} = {ratios[w]:.2f}"
        for w in WORKER_COUNTS) + f"  [{time.monotonic() - wall:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
