"""A local cluster of separate server and worker processes on 127.0.0.1.

Every process it starts is tracked by its Popen handle and ended by pid on exit, so a
failed or interrupted run never leaves strays behind (and never touches anyone else's).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

CLI = (sys.executable, "-m", "paramserver.cli.main")
R = TypeVar("R")


class ClusterError(RuntimeError):
    """A process of the cluster failed; the message carries the tail of its log."""


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


@dataclass
class LocalCluster:
    """Starts servers and workers as subprocesses; use as a context manager."""

    run_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None,
              program: Sequence[str] = CLI) -> ManagedProcess:
        """Start `PROGRAM ARGS` (by default `paramserver ARGS`) with its output in
        RUN_DIR/NAME.log; `env` adds to ours."""
        log_path = self.run_dir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        with open(log_path, "wb") as log:
            process = subprocess.Popen([*program, *args], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env)
        managed = ManagedProcess(name, process, log_path)
        self.processes.append(managed)
        return managed

    def start_servers(self, count: int, server_args: Sequence[str], timeout_s: float = 60.0,
                      first_index: int = 0, program: Sequence[str] = CLI,
                      ) -> list[tuple[ManagedProcess, str]]:
        """Start `count` servers at once on free ports; return them with their addresses
        (in shard order) once all are bound. Names run from server-{first_index}; the text
        '{index}' in an argument becomes the server's index (a checkpoint dir per shard).
        `program` runs `serve ARGS` (tests pass one that injects faults)."""
        started = []
        for index in range(first_index, first_index + count):
            port_file = self.run_dir / f"server-{index}.port"
            port_file.unlink(missing_ok=True)
            managed = self.spawn(f"server-{index}", [
                "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
                *(arg.replace("{index}", str(index)) for arg in server_args)], program=program)
            started.append((managed, port_file))
        deadline = time.monotonic() + timeout_s
        for managed, port_file in started:
            while not port_file.exists():
                if managed.process.poll() is not None:
                    raise ClusterError(f"{managed.name} exited with code "
                                       f"{managed.process.returncode} before serving:\n"
                                       f"{managed.log_tail()}")
                if time.monotonic() > deadline:
                    raise ClusterError(f"{managed.name} did not start within {timeout_s}s:\n"
                                       f"{managed.log_tail()}")
                time.sleep(0.05)
        return [(m, f"127.0.0.1:{int(f.read_text())}") for m, f in started]

    def check_failed(self, group: Sequence[ManagedProcess]) -> None:
        """Raise ClusterError if any process in `group` exited non-zero."""
        for managed in group:
            code = managed.process.poll()
            if code not in (None, 0):
                raise ClusterError(f"{managed.name} exited with code {code}:\n"
                                   f"{managed.log_tail()}")

    def stop(self, managed: ManagedProcess, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        process = managed.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)
        return int(process.returncode)

    def stop_all(self) -> None:
        for managed in reversed(self.processes):
            self.stop(managed)


def run_in_processes(target: Callable[..., R], args_per_process: Sequence[tuple[Any, ...]],
                     timeout_s: float = 600.0) -> list[R]:
    """Run `target(*args)` in one fresh (spawned) process per args tuple, concurrently, and
    return the results in order. A process that fails or outlives `timeout_s` is ended
    (by its own pid) and raises ClusterError: nothing is left running, nothing hangs."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_report_to, args=(results, index, target, args),
                                 daemon=True) for index, args in enumerate(args_per_process)]
    for process in processes:
        process.start()
    collected: dict[int, R] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < len(processes):
            try:
                index, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise ClusterError(f"processes still running after {timeout_s}s") from None
            if not ok:
                raise ClusterError(f"process {index} failed:\n{value}")
            collected[index] = value
    finally:
        for process in processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()
    return [collected[i] for i in range(len(processes))]


def _report_to(results: Any, index: int, target: Callable[..., Any],
               args: tuple[Any, ...]) -> None:
    try:
        results.put((index, True, target(*args)))
    except BaseException:  # noqa: BLE001 - the parent raises it with the traceback
        results.put((index, False, traceback.format_exc()))
