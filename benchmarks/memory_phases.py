"""Where a server's resident memory above idle goes in `benchmarks.datapath`'s memory rounds
(issue #14).

The same sync server and clients (Blob model, SGD momentum 0.9), the server started through
this module (`--serve`), which patches phase hooks into it from outside the package: every
2 ms and at each event (push opened / whole, step applied, pull started / ended) it records
RSS, glibc's `mallinfo2` (heap size, in use, free; mmapped bytes) and minor faults, and
writes them when the server exits. Then, per W, peak minus idle is split at the peak sample
into mmapped / heap in use / heap free but resident / other, and the heap in use above its
resting level (after the first step) is shown at its highest with each count of pushes and
pulls in flight.

    python -m benchmarks.memory_phases [--workers 1,2,4] [--reps 3] [--mb 100] [--report F]
                                       [--recv-window 8MiB]
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import datapath, harness

MIB = 1 << 20
SAMPLE_S = 0.002
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
          "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


class Recorder:
    """Events with the process's memory at that moment; `_lock` guards `rows`."""

    def __init__(self) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        self._mallinfo = libc.mallinfo2
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []

    def event(self, name: str) -> None:
        info = self._mallinfo()
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * self._page
        with open("/proc/self/stat") as stat:
            faults = int(stat.read().rsplit(")", 1)[1].split()[7])
        row = {"t": time.monotonic(), "ev": name, "rss": rss, "heap": info.arena,
               "heap_used": info.uordblks, "heap_free": info.fordblks, "mmap": info.hblkhd,
               "minflt": faults}
        with self._lock:
            self.rows.append(row)

    def sample_forever(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            self.event("sample")


def _around(owner: Any, name: str, before: str, after: str, recorder: Recorder) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            recorder.event(before)
        result = original(*args, **kwargs)
        if after:
            recorder.event(after)
        return result
    setattr(owner, name, wrapped)


def install(out: Path) -> None:
    """Patch the hooks into this process's server modules; write the rows to `out` at exit."""
    from paramserver.server import pull, store
    from paramserver.server.policies import sync

    recorder = Recorder()
    _around(sync.InPlacePush, "__init__", "", "push_open", recorder)
    _around(sync.InPlacePush, "finish", "push_whole", "", recorder)
    _around(store.ParameterStore, "apply", "apply_start", "apply_end", recorder)
    _around(store.ParameterStore, "create", "create_start", "", recorder)
    messages = pull.pull_messages  # looked up in `pull` by every pull it encodes

    def pull_messages(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        recorder.event("pull_start")
        yield from messages(*args, **kwargs)
        recorder.event("pull_end")
    pull.pull_messages = pull_messages  # type: ignore[assignment]
    threading.Thread(target=recorder.sample_forever, daemon=True, name="memory-phases").start()
    atexit.register(lambda: out.write_text("".join(json.dumps(r) + "\n" for r in recorder.rows)))


def split(rows: list[dict[str, Any]], idle_rss: int) -> dict[str, Any]:
    """Peak - idle at the peak sample of the steps, by where it lives; heap in use by phase."""
    first_push = next(r["t"] for r in rows if r["ev"] == "push_open")
    idle = min((r for r in rows if r["t"] < first_push), key=lambda r: abs(r["rss"] - idle_rss))
    last_pull = max(r["t"] for r in rows if r["ev"] == "pull_end")  # not the shutdown
    steps = [r for r in rows if first_push <= r["t"] <= last_pull]
    peak = max(steps, key=lambda r: r["rss"])
    part = {key: (peak[key] - idle[key]) / MIB
            for key in ("rss", "mmap", "heap_used", "heap_free", "heap")}
    part["other"] = part["rss"] - part["heap"] - part["mmap"]
    # From the first step on (the momentum exists), above the heap in use at rest.
    first_step = next(i for i, r in enumerate(steps) if r["ev"] == "apply_end")
    resting = min(r["heap_used"] for r in steps[first_step:])
    pushes = pulls = 0
    by_phase: dict[str, float] = {}
    for index, row in enumerate(steps):
        pushes += {"push_open": 1, "push_whole": -1}.get(row["ev"], 0)
        pulls += {"pull_start": 1, "pull_end": -1}.get(row["ev"], 0)
        if index >= first_step:
            key = f"{pushes} pushes, {pulls} pulls"
            by_phase[key] = max(by_phase.get(key, 0.0), (row["heap_used"] - resting) / MIB)
    faults = [r["minflt"] for r in steps if r["ev"] == "apply_end"]
    return {"peak_minus_idle_mib": part, "heap_used_above_rest_mib_by_phase": by_phase,
            "faults_per_step": [b - a for a, b in itertools.pairwise(faults)]}


def measure(run_dir: Path, workers: int, reps: int, model_mb: float,
            server_args: list[str] | None = None) -> dict[str, Any]:
    out = run_dir / f"phases-w{workers}.jsonl"
    args = [*datapath.server_command("sync", workers)[len(harness.CLI):], *(server_args or [])]
    command = [sys.executable, "-m", "benchmarks.memory_phases", "--serve", str(out), *args]
    _, rss = datapath.ours(run_dir, model_mb, workers, reps, command)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    report = {**rss, "peak_over_idle_x": (rss["peak_rss"] - rss["idle_rss"])
              / datapath._nbytes(model_mb), **split(rows, rss["idle_rss"])}
    part = report["peak_minus_idle_mib"]
    print(f"W={workers}: peak - idle {part['rss']:.0f} MiB ({report['peak_over_idle_x']:.2f}x) "
          f"= mmapped {part['mmap']:.0f} + heap in use {part['heap_used']:.0f} + heap free "
          f"{part['heap_free']:.0f} + other {part['other']:.0f}", flush=True)
    print("  heap in use above rest (MiB), highest with: " + "; ".join(
        f"{k} {v:.0f}" for k, v in sorted(report["heap_used_above_rest_mib_by_phase"].items())),
        flush=True)
    return report


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:  # the server process: hooks, then `paramserver serve`
        install(Path(argv[1]))
        from paramserver.cli.main import main as serve
        return serve(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mb", type=float, default=datapath.BULK_MB)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--recv-window", help="the server's --recv-window (default: its own)")
    args = parser.parse_args(argv)
    extra = [] if args.recv_window is None else ["--recv-window", args.recv_window]
    report: dict[str, Any] = {"model_mb": args.mb, "load_at_start": os.getloadavg(),
                              "server_args": extra}
    with tempfile.TemporaryDirectory(prefix="ps-phases-") as tmp:
        for workers in (int(w) for w in args.workers.split(",")):
            report[f"w{workers}"] = measure(Path(tmp), workers, args.reps, args.mb, extra)
    harness.write_report(harness.report_path("memory-phases", args.report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
