"""`paramserver serve` processes for the suite's jobs: started together, stopped one job at
a time, with their memory read from outside.

A section starts the servers of all its jobs at once, before anything is timed: a server
spends ~2 s of CPU importing torch, so on 2 cores starting them in parallel halves the
wait, and idle servers cost no CPU while the other jobs run. Each job still gets its own
fresh servers, so its memory figures are its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from benchmarks.measure import peak_rss_bytes, rss_bytes
from paramserver.cli.local_cluster import LocalCluster, ManagedProcess

START_TIMEOUT_S = 600.0  # dozens of servers importing torch at once on 2 cores
OPTIMIZER_SLOTS = 1  # SGD with momentum: one buffer per parameter


@dataclass
class Servers:
    """The shards of one job, in shard order."""

    processes: list[ManagedProcess]
    addresses: list[str]
    idle_rss: list[int]  # resident memory right after start, before any client

    @property
    def pids(self) -> list[int]:
        return [m.process.pid for m in self.processes]


def start_jobs(cluster: LocalCluster, jobs: Sequence[tuple[int, list[str]]],
               first_index: int = 0) -> list[Servers]:
    """Start (shards, server args) for every job at once; one Servers per job, in order."""
    def start(index: int) -> list[tuple[ManagedProcess, str]]:
        shards, args = jobs[index]
        return cluster.start_servers(shards, args, timeout_s=START_TIMEOUT_S,
                                     first_index=first_index + 10 * index)

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as threads:
        started = list(threads.map(start, range(len(jobs))))
    time.sleep(0.2)  # let the last one settle before reading idle memory
    return [Servers([m for m, _ in shards], [a for _, a in shards],
                    [rss_bytes(m.process.pid) for m, _ in shards]) for shards in started]


def stop(cluster: LocalCluster, servers: Servers) -> None:
    for managed in servers.processes:
        cluster.stop(managed)


def memory(servers: Servers, held: Sequence[int],
           peaks: Sequence[int] | None = None) -> dict[str, Any]:
    """Peak resident memory above idle per shard, as a multiple of the model bytes it holds
    (`held`, per shard); the budget is parameters + aggregation buffer + optimizer slots.
    `peaks`: high-water marks read earlier (default: now)."""
    peaks = list(peaks) if peaks is not None else [peak_rss_bytes(pid) for pid in servers.pids]
    ratios = [(peak - idle) / nbytes for peak, idle, nbytes in
              zip(peaks, servers.idle_rss, held)]
    return {"idle_rss": servers.idle_rss, "peak_rss": peaks, "held_bytes": list(held),
            "peak_over_idle_x_model": ratios, "budget_x_model": 2 + OPTIMIZER_SLOTS}
