"""This framework: synchronous steps and asynchronous push rates, real server processes.

A group is one job: `paramserver serve` processes (one per shard, started for the group)
and W workers from the suite's process pool. Inside a group the workers open a fresh
session per codec and link cap, in lockstep, so one server start serves many rows.

A sync step is what a training loop pays: push every gradient (through the codec), the
server aggregates the W pushes and applies SGD with momentum, then pull the new
parameters. Its time is the slowest worker's, step by step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.blob import Blob, blob_sizes
from benchmarks.measure import StageClock, StageCpu, cpu_split, peak_rss_bytes, stat
from benchmarks.shaping import capped_links
from benchmarks.suite import netcap
from benchmarks.suite.pool import WorkerPool
from benchmarks.suite.servers import Servers, memory, start_jobs, stop
from paramserver.cli.local_cluster import LocalCluster
from paramserver.transport import parse_bandwidth
from paramserver.types import CodecSpec
from workers import ParameterClient

TIMEOUT_S = 300.0  # every RPC and barrier
LR, MOMENTUM = 0.001, 0.9  # as PyTorch's parameter-server tutorial; one optimizer slot


@dataclass(frozen=True)
class Group:
    """One job: a model of `model_mb` on `shards` servers with `workers` workers, measured
    per codec and per link cap. `caps` empty: the link is left alone. `token_bucket`: the
    caps are our client's own token bucket instead of tc (only where tc cannot be used;
    it caps this system alone)."""

    model_mb: float
    workers: int
    shards: int = 1
    codecs: tuple[str, ...] = ("none",)
    caps: tuple[str, ...] = ()
    token_bucket: bool = False


def server_args(mode: str, workers: int) -> list[str]:
    return ["--mode", mode, "--workers", str(workers), "--lr", str(LR), "--momentum",
            str(MOMENTUM), "--grace", "1"]


def _client(addresses: Sequence[str], rank: int, codec: str,
            bandwidth: float | None = None) -> ParameterClient:
    return ParameterClient(list(addresses), f"worker-{rank}", timeout_s=TIMEOUT_S,
                           push_codecs=[CodecSpec.parse(codec)],
                           shaper_factory=capped_links(bandwidth))


def sync_worker(rank: int, barrier: Any, addresses: list[str], group: Group, warmup: int,
                reps: int, servers: list[int]) -> dict[str, Any]:
    """Warm-up and timed sync steps per (codec, cap), a fresh session for each; rank 0 sets
    the tc cap and watches the servers."""
    model = Blob(group.model_mb)
    rows = []
    shard_bytes: list[int] = []
    for codec in group.codecs:
        for cap in group.caps or ("unlimited",):
            barrier.wait(TIMEOUT_S)  # every previous session closed
            if group.caps and not group.token_bucket and rank == 0:
                netcap.apply(cap)
            barrier.wait(TIMEOUT_S)
            bandwidth = parse_bandwidth(cap) if group.token_bucket else None
            with _client(addresses, rank, codec, bandwidth) as client:
                client.attach(model)
                model.set_gradients()  # attach pulled the parameters; gradients stay fixed
                shard_bytes = client.plan.shard_bytes() if client.plan else []
                for _ in range(warmup):
                    client.step()
                barrier.wait(TIMEOUT_S)
                clock = StageClock(servers if rank == 0 else ())
                up, down = client.gradient_bytes_pushed, client.bytes_pulled
                clock.start()
                steps = []
                for _ in range(reps):
                    started = time.perf_counter()
                    client.step()
                    steps.append(time.perf_counter() - started)
                barrier.wait(TIMEOUT_S)  # every worker's last pull is in: the stage is whole
                stage = clock.stop()
                # The servers' memory high-water mark so far: rows run in order, so the
                # first codec's figure is its own and later ones include what came before.
                peaks = [peak_rss_bytes(pid) for pid in servers] if rank == 0 else []
                rows.append({"codec": codec, "cap": cap, "steps": steps, "stage": asdict(stage),
                             "server_peak_rss": peaks,
                             "bytes_up": (client.gradient_bytes_pushed - up) // reps,
                             "bytes_down": (client.bytes_pulled - down) // reps})
    return {"rows": rows, "shard_bytes": shard_bytes}


def async_worker(rank: int, barrier: Any, addresses: list[str], model_mb: float, warmup: int,
                 windows: int, window_s: float, servers: list[int]) -> dict[str, Any]:
    """Step (push, then pull our own update) as fast as possible for `windows` windows."""
    model = Blob(model_mb)
    with _client(addresses, rank, "none") as client:
        client.attach(model)
        model.set_gradients()
        for _ in range(warmup):
            client.step()
        barrier.wait(TIMEOUT_S)
        clock = StageClock(servers if rank == 0 else ())
        clock.start()
        counts, spans = [], []
        for _ in range(windows):
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < window_s:
                client.step()
                count += 1
            counts.append(count)
            spans.append(time.perf_counter() - started)
        return {"counts": counts, "spans": spans, "stage": asdict(clock.stop())}


def run_sync(pool: WorkerPool, cluster: LocalCluster, servers: Servers, group: Group,
             warmup: int, reps: int) -> list[dict[str, Any]]:
    """One row per (codec, cap) of the group; each row's memory figure is the servers' peak
    so far (the group's first codec, `none` in the plans, is measured on its own)."""
    barrier = pool.manager.Barrier(group.workers)
    try:
        results = pool.run(sync_worker, [
            (rank, barrier, servers.addresses, group, warmup, reps, servers.pids)
            for rank in range(group.workers)], 3 * TIMEOUT_S)
        shard_bytes = results[0]["shard_bytes"]
    finally:
        stop(cluster, servers)
    rows = []
    for index, first in enumerate(results[0]["rows"]):
        per_worker = [r["rows"][index] for r in results]
        steps = [max(times) for times in zip(*(w["steps"] for w in per_worker))]
        stages = [StageCpu(**w["stage"]) for w in per_worker]
        rows.append({"system": "ours", "mode": "sync", "model_mb": group.model_mb,
                     "workers": group.workers, "shards": group.shards, "codec": first["codec"],
                     "cap": first["cap"], "step_s": stat(steps),
                     "bytes_up": sum(w["bytes_up"] for w in per_worker),
                     "bytes_down": sum(w["bytes_down"] for w in per_worker),
                     "wire_bytes": stages[0].wire_bytes // reps,
                     **cpu_split(stages, reps),
                     "memory": memory(servers, shard_bytes, first["server_peak_rss"])})
    return rows


def run_async(pool: WorkerPool, cluster: LocalCluster, servers: Servers, model_mb: float,
              workers: int, warmup: int, windows: int, window_s: float) -> dict[str, Any]:
    """Pushes per second over all workers of an async job, one figure per window."""
    barrier = pool.manager.Barrier(workers)
    try:
        results = pool.run(async_worker, [
            (rank, barrier, servers.addresses, model_mb, warmup, windows, window_s,
             servers.pids) for rank in range(workers)], 3 * TIMEOUT_S)
        used = memory(servers, [4 * sum(blob_sizes(model_mb))])
    finally:
        stop(cluster, servers)
    rates = [sum(counts) / (sum(spans) / len(spans)) for counts, spans in
             zip(zip(*(r["counts"] for r in results)), zip(*(r["spans"] for r in results)))]
    stages = [StageCpu(**r["stage"]) for r in results]
    pushes = sum(sum(r["counts"]) for r in results)
    return {"system": "ours", "mode": "async", "model_mb": model_mb, "workers": workers,
            "shards": 1, "codec": "none", "pushes_per_s": stat(rates),
            **cpu_split(stages, pushes), "memory": used}


def measure(pool: WorkerPool, run_dir: Path, sync_groups: Sequence[Group],
            async_groups: Sequence[tuple[float, int]], warmup: int, reps: int, windows: int,
            window_s: float, log: Any = print) -> dict[str, list[dict[str, Any]]]:
    """Every sync group, then every async (model_mb, workers) job; prints as it goes."""
    sync, asynchronous = [], []
    with LocalCluster(run_dir) as cluster:
        jobs = start_jobs(cluster, [(g.shards, server_args("sync", g.workers))
                                    for g in sync_groups]
                          + [(1, server_args("async", w)) for _, w in async_groups])
        for group, servers in zip(sync_groups, jobs):
            for row in run_sync(pool, cluster, servers, group, warmup, reps):
                sync.append(row)
                log(f"  ours sync {row['model_mb']:>5g} MB W={row['workers']} "
                    f"S={row['shards']} {row['codec']:<16} {row['cap']:>9}  step "
                    f"{1e3 * row['step_s']['median']:9.1f} ms "
                    f"({1e3 * row['step_s']['min']:.1f}-{1e3 * row['step_s']['max']:.1f})")
        for (model_mb, workers), servers in zip(async_groups, jobs[len(sync_groups):]):
            row = run_async(pool, cluster, servers, model_mb, workers, warmup, windows,
                            window_s)
            asynchronous.append(row)
            log(f"  ours async {model_mb:>5g} MB W={workers}  "
                f"{row['pushes_per_s']['median']:8.1f} pushes/s "
                f"({row['pushes_per_s']['min']:.1f}-{row['pushes_per_s']['max']:.1f})")
    return {"sync": sync, "async": asynchronous}
