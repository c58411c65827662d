"""The server's data path against its floors, and its memory (issue #14).

Four measurements, each on loopback with separate processes, ratios from this one run:

- bulk: a 100 MB model (1 shard), W=1 and W=2: push+pull rounds of our server (sync, SGD
  with momentum 0.9), over the gRPC streams and over the shared-memory data plane
  (`--shm-data-plane`, issue #14), against the bare gRPC stream of the same chunk messages
  (`benchmarks.bare_grpc`) and, beside it, raw loopback TCP echoing the same bytes;
- small: a 40 KB model's sync step at W=2 (`ParameterClient.step`: push, aggregate, SGD
  with momentum, pull), on the streams and in one Step call (issue #14), against a bare
  gRPC unary echo of the same bytes, W=2 at once, and the bare stream round of its messages;
- memory: the server's peak RSS above idle over the model bytes, W=1, 2 and 4 (budget 3x:
  parameters + momentum + one aggregation buffer), over the streams and over shm;
- soak: 10,000 async pushes of a 1 MB model from 2 workers, RSS growth after the first 10%.

    python -m benchmarks.datapath [--only bulk,small,memory,soak] [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc

from benchmarks import bare_grpc, harness
from benchmarks.blob import blob_sizes
from benchmarks.measure import peak_rss_bytes, rss_bytes
from benchmarks.rounds import TIMEOUT_S, Result, run_clients, run_rounds
from benchmarks.suite.floor import tcp_floor
from benchmarks.suite.pool import WorkerPool
from paramserver.transport import DEFAULT_CHUNK_BYTES, channel_options
from workers.step_calls import STEP_CALL_BYTES

LR, MOMENTUM = 0.001, 0.9
BULK_MB, SMALL_MB = 100.0, 0.04
SMALL_WORKERS = 2
MEMORY_WORKERS = (1, 2, 4)
SOAK_PUSHES, SOAK_MB = 10_000, 1.0
SECTIONS = ("bulk", "small", "memory", "soak")


def server_command(mode: str, workers: int) -> list[str]:
    return [*harness.CLI, "serve", "--port", "0", "--mode", mode, "--workers", str(workers),
            "--lr", str(LR), "--momentum", str(MOMENTUM), "--grace", "1"]


def step_worker(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
                model_mb: float, reps: int, step_call_bytes: int = STEP_CALL_BYTES,
                shm: bool = False) -> list[Any]:
    """Sync steps of a Blob model through the real client (push, then pull; one Step call
    where the model fits `step_call_bytes`, 0: always the streams; `shm`: through the
    shared-memory data plane, which the server must accept)."""
    import torch

    from benchmarks.blob import Blob
    from workers import ParameterClient

    torch.set_num_threads(1)
    model = Blob(model_mb)
    with ParameterClient([address], f"dp-{index}", timeout_s=TIMEOUT_S,
                         step_call_bytes=step_call_bytes, shm=shm) as client:
        if shm and client.connections[0].shm is None:
            raise RuntimeError("the server did not accept the shared-memory data plane")
        client.attach(model)
        model.set_gradients()

        def round_trip() -> None:
            client.step()

        stages = [run_rounds(round_trip, reps, round_barrier, stage_barrier)]
    return stages


def echo_worker(index: int, round_barrier: Barrier, stage_barrier: Barrier, address: str,
                nbytes: int, reps: int, method: str = "Echo") -> list[Any]:
    """A bare unary echo of `nbytes` per round (`Meet`: answered once every worker's call
    of the round arrived)."""
    channel = grpc.insecure_channel(address, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    echo = channel.unary_unary(f"/{bare_grpc.SERVICE}/{method}",
                               request_serializer=bare_grpc.identity,
                               response_deserializer=bare_grpc.identity)
    payload = os.urandom(nbytes)

    def round_trip() -> None:
        echo(payload, timeout=TIMEOUT_S)

    stages = [run_rounds(round_trip, reps, round_barrier, stage_barrier)]
    channel.close()
    return stages


def _shapes(model_mb: float) -> list[tuple[int, ...]]:
    return [(n,) for n in blob_sizes(model_mb)]


def _nbytes(model_mb: float) -> int:
    return 4 * sum(blob_sizes(model_mb))


def ours(run_dir: Path, model_mb: float, workers: int, reps: int,
         command: Sequence[str] | None = None, step_call_bytes: int = STEP_CALL_BYTES,
         shm: bool = False) -> tuple[Result, dict[str, int]]:
    """Sync steps against a fresh server; its idle and peak RSS with the result."""
    command = list(command or server_command("sync", workers)) + (
        ["--shm-data-plane"] if shm else [])
    with harness.serving(command, run_dir, f"ps-{model_mb:g}-w{workers}") as server:
        time.sleep(0.2)
        idle = rss_bytes(server.pid)
        [result] = run_clients("ours-shm" if shm else "ours", step_worker,
                               (server.address, model_mb, reps, step_call_bytes, shm), workers,
                               [DEFAULT_CHUNK_BYTES], _nbytes(model_mb), server.pid)
        return result, {"idle_rss": idle, "peak_rss": peak_rss_bytes(server.pid)}


def bare_stream(run_dir: Path, model_mb: float, workers: int, reps: int) -> Result:
    shapes = _shapes(model_mb)
    with harness.serving(bare_grpc.command(shapes), run_dir, f"bare-w{workers}") as bare:
        [result] = run_clients("bare-stream", bare_grpc.client,
                               (bare.address, shapes, [DEFAULT_CHUNK_BYTES], reps), workers,
                               [DEFAULT_CHUNK_BYTES], _nbytes(model_mb), bare.pid)
    return result


def bare_echo(run_dir: Path, model_mb: float, workers: int, reps: int,
              method: str = "Echo") -> Result:
    with harness.serving(bare_grpc.command(_shapes(model_mb), workers), run_dir,
                         method.lower()) as bare:
        [result] = run_clients(f"bare-{method.lower()}", echo_worker,
                               (bare.address, _nbytes(model_mb), reps, method), workers,
                               [DEFAULT_CHUNK_BYTES], _nbytes(model_mb), bare.pid)
    return result


def _ms(result: Result) -> float:
    return 1e3 * statistics.median(result.round_s)


def _row(result: Result) -> dict[str, Any]:
    return {**result.summary(), "round_ms_median": _ms(result)}


def bulk(run_dir: Path, reps: int, model_mb: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with WorkerPool(2) as pool:
        tcp = tcp_floor(pool, model_mb, 2, reps)
    out["tcp"] = tcp
    print(f"bulk {model_mb:g} MB raw TCP W=1: {1e3 * tcp['round_s']['median']:.1f} ms, "
          f"{tcp['gbps']:.3f} GB/s", flush=True)
    for workers in (1, 2):
        bare = bare_stream(run_dir, model_mb, workers, reps)
        mine, _ = ours(run_dir, model_mb, workers, reps)
        shm, _ = ours(run_dir, model_mb, workers, reps, shm=True)
        ratio = _ms(bare) / _ms(mine)
        tcp_ms = tcp["round_s"]["median"] * workers * 1e3
        out[f"w{workers}"] = {"bare": _row(bare), "ours": _row(mine), "ours_over_bare": ratio,
                              "ours_over_tcp_w1": tcp_ms / _ms(mine), "ours_shm": _row(shm),
                              "shm_over_bare": _ms(bare) / _ms(shm),
                              "shm_over_tcp_w1": tcp_ms / _ms(shm)}
        print(f"bulk {model_mb:g} MB W={workers}: ours {_ms(mine):.1f} ms "
              f"({statistics.median(mine.gbps()):.3f} GB/s, srv cpu "
              f"{1e3 * mine.server_cpu_s:.0f} ms) | bare stream {_ms(bare):.1f} ms "
              f"({statistics.median(bare.gbps()):.3f} GB/s, srv cpu "
              f"{1e3 * bare.server_cpu_s:.0f} ms) | ours/bare {ratio:.2f}, ours/tcp "
              f"{out[f'w{workers}']['ours_over_tcp_w1']:.2f} | other cpu "
              f"{1e3 * mine.other_cpu_s:.0f}/{1e3 * bare.other_cpu_s:.0f} ms", flush=True)
        print(f"bulk {model_mb:g} MB W={workers}: ours over shm {_ms(shm):.1f} ms "
              f"({statistics.median(shm.gbps()):.3f} GB/s, srv cpu "
              f"{1e3 * shm.server_cpu_s:.0f} ms, clients {1e3 * shm.client_cpu_s:.0f} ms) | "
              f"bare/shm {_ms(bare) / _ms(shm):.2f}, tcp/shm "
              f"{out[f'w{workers}']['shm_over_tcp_w1']:.2f}", flush=True)
    return out


def small(run_dir: Path, reps: int) -> dict[str, Any]:
    """Our step, on the streams and in one Step call (issue #14), against a unary echo of
    its bytes and against the bare stream round of the very messages a streamed step moves
    (push: the chunks up; pull: the chunks down), and a unary echo whose W calls of a round
    meet on the server before they are answered (`Meet`: what a sync step's calls must do)."""
    echo = bare_echo(run_dir, SMALL_MB, SMALL_WORKERS, reps)
    meet = bare_echo(run_dir, SMALL_MB, SMALL_WORKERS, reps, "Meet")
    stream = bare_stream(run_dir, SMALL_MB, SMALL_WORKERS, reps)
    streamed, _ = ours(run_dir, SMALL_MB, SMALL_WORKERS, reps, step_call_bytes=0)
    called, _ = ours(run_dir, SMALL_MB, SMALL_WORKERS, reps)
    runs = {"echo": echo, "meet": meet, "stream": stream, "streamed": streamed,
            "step call": called}
    print(f"small {_nbytes(SMALL_MB) / 1e3:.0f} KB W={SMALL_WORKERS}, median ms (min), "
          "over the echo:", flush=True)
    for name, result in runs.items():
        print(f"  {name:<10} {_ms(result):6.2f} ({1e3 * min(result.round_s):.2f}) "
              f"{_ms(result) / _ms(echo):5.2f}x | cpu per round: server "
              f"{1e3 * result.server_cpu_s:.2f} ms, clients {1e3 * result.client_cpu_s:.2f} "
              f"ms, other processes {1e3 * result.other_cpu_s:.2f} ms", flush=True)
    return {"ours": _row(called), "ours_streamed": _row(streamed), "echo": _row(echo),
            "meet": _row(meet), "bare_stream": _row(stream),
            "ours_over_echo": _ms(called) / _ms(echo), "ours_over_meet": _ms(called) / _ms(meet),
            "ours_streamed_over_echo": _ms(streamed) / _ms(echo),
            "bare_stream_over_echo": _ms(stream) / _ms(echo)}


def memory(run_dir: Path, reps: int, model_mb: float) -> dict[str, Any]:
    out = {}
    for workers in MEMORY_WORKERS:
        for shm in (False, True):
            result, rss = ours(run_dir, model_mb, workers, reps, shm=shm)
            ratio = (rss["peak_rss"] - rss["idle_rss"]) / _nbytes(model_mb)
            out[f"w{workers}{'_shm' if shm else ''}"] = {
                **rss, "model_bytes": _nbytes(model_mb), "peak_over_idle_x": ratio,
                "step_ms": _ms(result)}
            print(f"memory {model_mb:g} MB W={workers}{' shm' if shm else ''}: idle "
                  f"{rss['idle_rss'] / 2**20:.0f} MiB, peak {rss['peak_rss'] / 2**20:.0f} MiB, "
                  f"above idle {ratio:.2f}x the model (step {_ms(result):.0f} ms)", flush=True)
    return out


def soak(run_dir: Path, pushes: int) -> dict[str, Any]:
    from benchmarks.suite.memory import soak as run_soak

    with WorkerPool(2) as pool:
        return run_soak(pool, run_dir, SOAK_MB, 2, pushes, log=print)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--quick", action="store_true",
                        help="16 MB bulk and memory model, fewer reps, 2,000-push soak")
    parser.add_argument("--reps", type=int, default=0, help="timed rounds (default 5; small 200)")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    big = 16.0 if args.quick else BULK_MB
    reps = args.reps or (3 if args.quick else 5)
    load = os.getloadavg()
    print(f"grpc {grpc.__version__}, {os.cpu_count()} cpus, load average {load[0]:.2f} at the "
          f"start", flush=True)
    report: dict[str, Any] = {"load_at_start": load, "cpu_count": os.cpu_count(),
                              "grpcio": grpc.__version__}
    with tempfile.TemporaryDirectory(prefix="ps-datapath-") as tmp:
        run_dir = Path(tmp)
        if "small" in chosen:
            report["small"] = small(run_dir, args.reps or (50 if args.quick else 200))
        if "bulk" in chosen:
            report["bulk"] = bulk(run_dir, reps, big)
        if "memory" in chosen:
            report["memory"] = memory(run_dir, reps, big)
        if "soak" in chosen:
            report["soak"] = soak(run_dir, 2_000 if args.quick else SOAK_PUSHES)
    report["load_at_end"] = os.getloadavg()
    print(f"load average {report['load_at_end'][0]:.2f} at the end")
    harness.write_report(harness.report_path("datapath", args.report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
