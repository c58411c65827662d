"""What every benchmark runs with: the CLI command, the link caps, where reports go, and a
server process started and stopped by pid.

Benchmarks run from a source checkout (`python -m benchmarks.<name>` at its root); they are
not installed with the package. A run's report goes to `runs/` at the root (git ignores it)
unless `--report FILE` says otherwise; the curated runs that RESULTS.md quotes are copied by
hand into `benchmarks/results/`, dated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent  # the checkout's root
RUNS = REPO / "runs"  # ignored by git: every run's report, unless --report says otherwise
CLI = [sys.executable, "-m", "paramserver.cli.main"]  # `paramserver` in this interpreter
# Link caps the codec comparisons step through: unlimited loopback, then a 10G, 1G and 100M
# link (a token bucket in our client, or tc on lo; see suite/netcap.py).
CAPS = ("unlimited", "10gbit", "1gbit", "100mbit")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


def report_path(name: str, given: Path | None) -> Path:
    """`given`, else runs/NAME-<UTC date and time>.json (a new file for every run)."""
    if given is not None:
        return given
    return RUNS / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"


def write_report(path: Path, report: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {path}")


@dataclass
class Server:
    """A server process we started, and the address it bound."""

    process: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL by pid if it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


@contextmanager
def serving(command: list[str], run_dir: Path, name: str) -> Iterator[Server]:
    """Run `command --port-file F` (output in RUN_DIR/NAME.log) until it has bound a port;
    stop it by pid when the block ends, however it ends."""
    port_file, log_path = run_dir / f"{name}.port", run_dir / f"{name}.log"
    port_file.unlink(missing_ok=True)  # a stale file would name a dead port
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, "--port-file", str(port_file)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=REPO)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield Server(process, f"127.0.0.1:{int(port_file.read_text())}")
    finally:
        stop(process)
