"""Client processes that time rounds in lockstep, and where the CPU went meanwhile.

Clients are processes, never threads, so they share no GIL with each other or with the
server. Every client warms up, then times `reps` rounds; all start each round together (a
barrier), and a round spans the first client's start to the last one's end. The parent
reads the server's and the machine's CPU time on either side of each timed stage.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

import psutil

from benchmarks.measure import busy_seconds
from paramserver.process_tuning import tune_process

# Five warm-up rounds: page faults in both processes (fresh 1 MiB message buffers until
# malloc's thresholds settle) only stop after 3-5 rounds, and one round left the ceiling
# measured mid-warm-up, 2-3x below its steady state.
WARMUP = 5
TIMEOUT_S = 120.0  # every RPC, barrier and start-up wait


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


def _child(target: Callable[..., list[Any]], index: int, results: Any, round_barrier: Barrier,
           stage_barrier: Barrier, *args: Any) -> None:
    tune_process()  # every client, ours and the ceiling's, runs with the same settings
    try:
        results.put((index, target(index, round_barrier, stage_barrier, *args), None))
    except BaseException:  # noqa: BLE001 - any failure must reach the parent
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
