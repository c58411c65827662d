"""`benchmarks.datapath`'s small step, memory and bulk rounds for two servers in one run: one
started from another checkout (e.g. `git archive <commit> | tar -x -C DIR`), one from this
one; the clients are this checkout's in both, so the difference is the server's. With
`--before-clients` the before rows' client processes run the other checkout's code too
(benchmark, workers and paramserver: spawned with it first on sys.path), so the difference
is both sides'.

    python -m benchmarks.datapath_compare --before DIR [--before-clients]
        [--only small,memory,bulk] [--report F]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import datapath, harness
from benchmarks.rounds import Result

PARTS = ("small", "memory", "bulk")
CLIENTS_FROM: list[Path] = []  # --before-clients: the other checkout, for the before rows


@contextlib.contextmanager
def clients_from(checkout: Path) -> Iterator[None]:
    """Client processes spawned in this block import from `checkout` first (spawn hands
    the parent's sys.path to the child before it imports anything); no-op without
    --before-clients. This process's own modules stay as they are."""
    if not CLIENTS_FROM:
        yield
        return
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))


def before_command(checkout: Path, workers: int) -> list[str]:
    """`paramserver serve` with the package imported from `checkout`."""
    args = datapath.server_command("sync", workers)[len(harness.CLI):]
    code = (f"import sys; sys.path.insert(0, {str(checkout)!r}); "
            "from paramserver.cli.main import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *args]


def _row(result: Result) -> dict[str, float]:
    return {"ms": datapath._ms(result), "min_ms": 1e3 * min(result.round_s),
            "server_cpu_ms": 1e3 * result.server_cpu_s,
            "client_cpu_ms": 1e3 * result.client_cpu_s,
            "other_cpu_ms": 1e3 * result.other_cpu_s}


def small(run: Path, before: Path, reps: int = 200) -> dict[str, Any]:
    mb, workers = datapath.SMALL_MB, datapath.SMALL_WORKERS
    rows = {"echo": datapath.bare_echo(run, mb, workers, reps),
            "bare_stream": datapath.bare_stream(run, mb, workers, reps),
            "before": _before(run, mb, workers, reps, before),
            "after": datapath.ours(run, mb, workers, reps)[0]}
    out = {name: _row(result) for name, result in rows.items()}
    echo = out["echo"]["ms"]
    print("small: " + "; ".join(f"{n} {r['ms']:.2f} ms = {r['ms'] / echo:.2f}x echo (cpu per "
                                f"round: server {r['server_cpu_ms']:.2f}, clients "
                                f"{r['client_cpu_ms']:.2f})" for n, r in out.items()),
          flush=True)
    return out


def _before(run: Path, model_mb: float, workers: int, reps: int, before: Path) -> Result:
    with clients_from(before):
        return datapath.ours(run, model_mb, workers, reps, before_command(before, workers))[0]


def memory(run: Path, before: Path, reps: int = 3) -> dict[str, Any]:
    out = {}
    for workers in datapath.MEMORY_WORKERS:
        for name, command in (("before", before_command(before, workers)), ("after", None)):
            result, rss = datapath.ours(run, datapath.BULK_MB, workers, reps, command)
            ratio = (rss["peak_rss"] - rss["idle_rss"]) / datapath._nbytes(datapath.BULK_MB)
            out[f"w{workers}_{name}"] = {**rss, "peak_over_idle_x": ratio, **_row(result)}
            print(f"memory W={workers} {name}: idle {rss['idle_rss'] / 2**20:.0f} MiB, peak "
                  f"{rss['peak_rss'] / 2**20:.0f} MiB, {ratio:.2f}x", flush=True)
    return out


def bulk(run: Path, before: Path, reps: int = 5) -> dict[str, Any]:
    out = {}
    for workers in (1, 2):
        rows = {"bare": datapath.bare_stream(run, datapath.BULK_MB, workers, reps),
                "before": datapath.ours(run, datapath.BULK_MB, workers, reps,
                                        before_command(before, workers))[0],
                "after": datapath.ours(run, datapath.BULK_MB, workers, reps)[0]}
        out[f"w{workers}"] = {name: _row(result) for name, result in rows.items()}
        print(f"bulk W={workers}: " + "; ".join(
            f"{n} {r['ms']:.0f} ms (srv cpu {r['server_cpu_ms']:.0f})"
            for n, r in out[f"w{workers}"].items()), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--before-clients", action="store_true",
                        help="small: the before rows' clients run the other checkout too")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    chosen = [p for p in args.only.split(",") if p]
    if args.before_clients:
        CLIENTS_FROM.append(args.before.resolve())
    measures = {"small": small, "memory": memory, "bulk": bulk}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ps-datapath-") as tmp:
        for part in chosen:
            report[part] = measures[part](Path(tmp), args.before.resolve())
    harness.write_report(harness.report_path("datapath-compare", args.report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
