"""`benchmarks.datapath`'s small step, memory and bulk rounds for two servers in one run: one
started from another checkout (e.g. `git archive <commit> | tar -x -C DIR`), one from this
one; the clients are this checkout's in both, so the difference is the server's.

    python -m benchmarks.datapath_compare --before DIR [--only small,memory,bulk] [--report F]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import datapath, harness
from benchmarks.rounds import Result

PARTS = ("small", "memory", "bulk")


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
            "before": datapath.ours(run, mb, workers, reps, before_command(before, workers))[0],
            "after": datapath.ours(run, mb, workers, reps)[0]}
    out = {name: _row(result) for name, result in rows.items()}
    print("small: " + "; ".join(f"{n} {r['ms']:.2f} ms (srv cpu {r['server_cpu_ms']:.2f})"
                                for n, r in out.items()), flush=True)
    return out


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
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    chosen = [p for p in args.only.split(",") if p]
    measures = {"small": small, "memory": memory, "bulk": bulk}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ps-datapath-") as tmp:
        for part in chosen:
            report[part] = measures[part](Path(tmp), args.before.resolve())
    harness.write_report(harness.report_path("datapath-compare", args.report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
