"""Timings and where the CPU, the memory and the wire bytes of a timed stage went.

`stat` is the one shape of every timing the benchmarks report (median, min, max, n). On a
2-core machine most figures are CPU-bound, so every stage records who used the cores: the
process itself, the processes it watches (servers), and the whole machine; what is left over
is another process's work (noise) or interrupt time, which no process is charged for and
which we leave out of the machine's total as `busy_seconds` explains.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

NET_DEV = Path("/proc/net/dev")  # per network namespace (unlike /sys/class/net)


def stat(samples: Sequence[float]) -> dict[str, float]:
    """Median with its spread; the one shape every timing in the report has."""
    values = list(samples)
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def busy_seconds() -> float:
    """CPU seconds all cores have spent running tasks since boot.

    Interrupt time is left out: loopback TCP runs partly in softirq, which no process is
    charged for, so counting it would blame our own traffic on "other processes".
    """
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "steal", 0.0)


def wire_bytes() -> int:
    """Bytes sent on this network namespace's loopback so far (both directions: on lo
    every packet is sent once); 0 where /proc/net/dev cannot be read."""
    try:
        lines = NET_DEV.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])  # receive: 8 fields, then transmit bytes
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads); 0 once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water mark of resident memory since it started (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@dataclass
class StageCpu:
    """One timed stage as seen from one process: its wall time, its own CPU, the CPU of the
    processes it watched, the whole machine's busy CPU and the bytes sent on loopback."""

    wall_s: float
    own_s: float
    watched_s: float
    machine_s: float
    wire_bytes: int


class StageClock:
    """Reads the clocks at `start()` and again at `stop()`; not reentrant."""

    def __init__(self, watched: Sequence[int] = ()) -> None:
        self.watched = list(watched)
        self._start: tuple[float, float, float, float, int] | None = None

    def _read(self) -> tuple[float, float, float, float, int]:
        return (time.perf_counter(), time.process_time(),
                sum(cpu_seconds(pid) for pid in self.watched), busy_seconds(), wire_bytes())

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> StageCpu:
        if self._start is None:
            raise RuntimeError("stop() before start()")
        end = self._read()
        wall, own, watched, machine, wire = (b - a for a, b in zip(self._start, end))
        return StageCpu(wall, own, watched, machine, int(wire))


def cpu_split(stages: Sequence[StageCpu], steps: int, leader: int = 0) -> dict[str, float]:
    """CPU seconds per step of the watched processes (servers), of all the reporting
    processes together (workers), and of everything else, from one stage per process;
    `leader` is the process that watched the servers and read the machine's total."""
    lead = stages[leader]
    workers = sum(s.own_s for s in stages)
    other = max(lead.machine_s - lead.watched_s - workers, 0.0)
    return {"server_cpu_s": lead.watched_s / steps, "worker_cpu_s": workers / steps,
            "other_cpu_s": other / steps, "busy_share": (lead.watched_s + workers)
            / max(lead.wall_s * (psutil.cpu_count() or 1), 1e-9)}
