"""Server memory over a long async run: does resident memory grow with the push count?

W workers push a small model to one async server as fast as they can (a pull every
PULL_EVERY pushes, so the parameters move too) while this process samples the server's
resident memory and version (= pushes applied) every SAMPLE_EVERY_S. Growth is measured
after the first tenth of the pushes, once buffer pools, gRPC arenas and the allocator have
reached their working size: a leak of one buffer per push, or even of a few bytes per
push, shows as a slope; a flat line does not.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.blob import Blob, blob_sizes
from benchmarks.measure import rss_bytes
from benchmarks.suite import servers as jobs
from benchmarks.suite.ours import TIMEOUT_S, server_args
from benchmarks.suite.pool import WorkerPool
from paramserver.cli.local_cluster import LocalCluster
from workers import ParameterClient
from workers.connection import ServerConnection

PULL_EVERY = 10
SAMPLE_EVERY_S = 0.25
SETTLED = 0.1  # growth is measured from this fraction of the pushes on
TOLERANCE_BYTES = 2 << 20  # RSS moves by allocator and gRPC arena noise within this


def soak_worker(rank: int, addresses: list[str], model_mb: float, pushes: int) -> int:
    model = Blob(model_mb)
    with ParameterClient(addresses, f"soak-{rank}", timeout_s=TIMEOUT_S) as client:
        client.attach(model)
        model.set_gradients()
        for index in range(pushes):
            client.push()
            if (index + 1) % PULL_EVERY == 0:
                client.pull(0)
    return pushes


def _sample(address: str, pid: int, stop: threading.Event, out: list[tuple[int, int]]) -> None:
    connection = ServerConnection(address, timeout_s=10.0)
    try:
        while not stop.wait(SAMPLE_EVERY_S):
            out.append((connection.status().version, rss_bytes(pid)))
    finally:
        connection.close()


def soak(pool: WorkerPool, run_dir: Path, model_mb: float, workers: int, pushes: int,
         log: Any = print) -> dict[str, Any]:
    """`pushes` in all, split over `workers`; RSS growth and its slope per push."""
    with LocalCluster(run_dir) as cluster:
        [servers] = jobs.start_jobs(cluster, [(1, server_args("async", workers))])
        [pid], [address] = servers.pids, servers.addresses
        samples: list[tuple[int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(address, pid, stop, samples),
                                   daemon=True)
        started = time.perf_counter()
        sampler.start()
        try:
            pool.run(soak_worker, [(rank, [address], model_mb, pushes // workers)
                                   for rank in range(workers)], 3 * TIMEOUT_S)
        finally:
            stop.set()
            sampler.join(30.0)
        wall = time.perf_counter() - started
        samples.append((pushes, rss_bytes(pid)))
        held = 4 * sum(blob_sizes(model_mb))
        used = jobs.memory(servers, [held])
        jobs.stop(cluster, servers)
    settled = [(v, r) for v, r in samples if v >= SETTLED * pushes]
    versions, rss = np.array(settled, dtype=np.float64).T
    slope = float(np.polyfit(versions, rss, 1)[0]) if len(settled) > 2 else 0.0
    growth = int(rss[-1] - rss[0])
    row = {"model_mb": model_mb, "workers": workers, "pushes": pushes, "wall_s": wall,
           "pushes_per_s": pushes / wall, **used, "rss_settled": int(rss[0]),
           "rss_end": int(rss[-1]), "growth_bytes": growth, "slope_bytes_per_push": slope,
           "tolerance_bytes": TOLERANCE_BYTES, "samples": samples}
    log(f"  soak {pushes} async pushes of {model_mb:g} MB, W={workers}: RSS "
        f"{rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB after the first "
        f"{SETTLED:.0%} ({growth / 2**20:+.2f} MiB, {slope:+.1f} B/push), "
        f"{pushes / wall:.0f} pushes/s")
    return row
