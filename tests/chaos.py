"""Fault injection on a local cluster: kill, freeze and restart processes we started, and
watch the servers react. Used by the fault tests and `benchmarks/faults.py`.

Only processes this module's caller started are signalled, always by their own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from paramserver.cli.local_cluster import LocalCluster, ManagedProcess
from paramserver.polling import WaitTimeout, wait_for
from workers.probes import probe_status

REPO = Path(__file__).resolve().parents[1]
# A fault run that waited past its bound counts as a hang.
Hang = WaitTimeout


def signal_process(managed: ManagedProcess, signum: signal.Signals) -> None:
    """Send `signum` to a process we started (by its pid)."""
    if managed.process.poll() is None:
        os.kill(managed.process.pid, signum)


@dataclass
class WorkerSpec:
    rank: int
    num_workers: int
    extra: Sequence[str] = ()
    step_delay_s: float = 0.0  # > 0: a straggler that sleeps this long before every push


def spawn_worker(cluster: LocalCluster, servers: str, spec: WorkerSpec, epochs: int,
                 report: Path, name: str | None = None) -> ManagedProcess:
    """A `paramserver worker` process with short deadlines, suited to fault runs; a spec
    with a step delay runs the same worker through `tests.straggler_worker`."""
    args = ["--servers", servers, "--rank", str(spec.rank), "--num-workers",
            str(spec.num_workers), "--worker-id", f"worker-{spec.rank}", "--epochs", str(epochs),
            "--report", str(report), "--log-level", "INFO", "--timeout", "20", *spec.extra]
    name = name or f"worker-{spec.rank}"
    if not spec.step_delay_s:
        return cluster.spawn(name, ["worker", *args])
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return cluster.spawn(name, ["--step-delay", str(spec.step_delay_s), *args],
                         env={"PYTHONPATH": path},
                         program=[sys.executable, "-m", "tests.straggler_worker"])


def restart_server(cluster: LocalCluster, old: ManagedProcess, port: int,
                   server_args: Sequence[str], timeout_s: float = 60.0) -> ManagedProcess:
    """Start a server again with the same arguments on the same port."""
    managed = cluster.spawn(f"{old.name}-restarted", [
        "serve", "--host", "127.0.0.1", "--port", str(port), *server_args])

    def serving() -> bool:
        cluster.check_failed([managed])  # raises with its log if it died on the way up
        return probe_status(f"127.0.0.1:{port}") is not None

    wait_for(f"{managed.name} serving", serving, timeout_s)
    return managed


def wait_exit(managed: ManagedProcess, timeout_s: float) -> int:
    """The exit code of a process that must end by itself within `timeout_s`."""
    try:
        return managed.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise Hang(f"{managed.name} still running after {timeout_s:.0f}s:\n"
                   f"{managed.log_tail()}") from None


def version_of(address: str) -> int:
    """The server's version, or -1 while it does not answer."""
    current = probe_status(address)
    return -1 if current is None else current.version


@dataclass
class DeathTrial:
    """A worker hit by `fault` mid-training: when the server evicted it, when a step closed."""

    evicted: tuple[str, ...]
    evicted_after_s: float
    step_closed_after_s: float


def hit_worker(address: str, victim: ManagedProcess, victim_id: str, fault: signal.Signals,
               start_version: int = 15, timeout_s: float = 90.0) -> DeathTrial:
    """Wait until the job passed `start_version`, hit `victim`, and time the server's answer:
    the victim's eviction, then the next step closing without it."""
    wait_for("training under way", lambda: version_of(address) >= start_version, timeout_s)
    earlier = set(wait_for("status", lambda: probe_status(address), 10).evicted)
    signal_process(victim, fault)
    hit = time.monotonic()
    before = version_of(address)

    def victim_evicted() -> tuple[str, ...]:
        current = probe_status(address)
        new = [e for e in (current.evicted if current else ()) if e not in earlier]
        return tuple(new) if any(e.startswith(victim_id + "@") for e in new) else ()

    evicted = wait_for("eviction", victim_evicted, 30)
    evicted_after = time.monotonic() - hit
    wait_for("the next step", lambda: version_of(address) > before + 1, 30)
    return DeathTrial(evicted, evicted_after, time.monotonic() - hit)
