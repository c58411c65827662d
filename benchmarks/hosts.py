"""The peer comparison across hosts with links of their own (the namespace test bed,
testbed/): ours (sync; none / top-k / qsgd) on 1 and 2 server hosts, gloo all-reduce, and
the suite's torch.distributed.rpc parameter server (benchmarks.suite.peers: its PS process on
a server host of its own, rendezvous at that host's address), with W workers each on its own
host, every host's link capped at the same rate.

    python -m benchmarks.hosts [--plan target|full|pulls|rpc] [--mb 100] [--reps 3]
                               [--rate 1gbit] [--report FILE]

`target` measures the issue's bar (1 Gbit/s per host, W=4, 100 MB, `none`: 2 server hosts
>= 1.6x faster than 1) and gloo beside it; `full` every rate (10 Gbit/s, 1 Gbit/s,
100 Mbit/s), W=2 and 4, 1 and 2 server hosts, the three codecs, gloo and the rpc PS;
`pulls` (issue #14) 1 Gbit/s per host, W=2, one server host, 16 MB and 100 MB: `none`,
top-k 1% pushes with
top-k pulls at W x the push ratio, qsgd 8-bit pushes and pulls, and gloo, with the bytes on
the wire per step counted at each worker host's eth0; `rpc` 1 Gbit/s per host (or
--rate: 10gbit, 100mbit), W=2 and 4, one server host: ours `none`, gloo and the rpc
parameter server. At 100 Mbit/s (`full`, and `rpc --rate 100mbit`) the model is a tenth of
--mb (a 100 MB step would take half a minute per step). A step's
time is the slowest worker's median. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO
from testbed import LinkSpec, NetBed, unavailable
from tests.chaos import wait_exit

CODECS = ("none", "topk:ratio=0.01", "qsgd:bits=8")
RATES = ("10gbit", "1gbit", "100mbit")
WORKER = (sys.executable, "-m", "benchmarks.hosts_worker")


@dataclass(frozen=True)
class Case:
    system: str  # "ours", "gloo" or "rpc"
    rate: str
    workers: int
    server_hosts: int  # 0 for gloo; 1 for rpc (the PS process)
    codec: str
    model_mb: float
    pull_codec: str = "none"


def plan(name: str, mb: float, rate: str = "1gbit") -> list[Case]:
    if name == "pulls":
        return [case for size in (16.0, mb) for case in (
            Case("ours", "1gbit", 2, 1, "none", size),
            Case("ours", "1gbit", 2, 1, "topk:ratio=0.01", size, "topk:ratio=0.02"),
            Case("ours", "1gbit", 2, 1, "qsgd:bits=8", size, "qsgd:bits=8"),
            Case("gloo", "1gbit", 2, 0, "none", size))]
    if name == "rpc":
        size = mb / 10 if rate == "100mbit" else mb  # as `full` does
        return [Case(system, rate, workers, servers, "none", size) for workers in (2, 4)
                for system, servers in (("ours", 1), ("gloo", 0), ("rpc", 1))]
    if name == "target":
        return [Case("ours", "1gbit", 4, 1, "none", mb), Case("ours", "1gbit", 4, 2, "none", mb),
                Case("gloo", "1gbit", 4, 0, "none", mb)]
    cases = []
    for link, workers in itertools.product(RATES, (2, 4)):
        size = mb / 10 if link == "100mbit" else mb
        cases += [Case("ours", link, workers, s, c, size) for s in (1, 2) for c in CODECS
                  if c == "none" or s == 1]  # codecs on one server host, as the suite
        cases.append(Case("gloo", link, workers, 0, "none", size))
        cases.append(Case("rpc", link, workers, 1, "none", size))
    return cases


def run_case(case: Case, run_dir: Path, warmup: int, reps: int) -> dict[str, Any]:
    hosts = case.server_hosts + case.workers
    with NetBed(run_dir, hosts, LinkSpec(case.rate)) as bed:
        outs = [run_dir / f"rank-{r}.json" for r in range(case.workers)]
        common = ["--mb", str(case.model_mb), "--warmup", str(warmup), "--reps", str(reps)]
        env = {"PYTHONPATH": str(REPO)}
        if case.system == "ours":
            servers = ",".join(bed.start_server(bed.host(i), [
                "--mode", "sync", "--workers", str(case.workers), "--lr", "0.001",
                "--momentum", "0.9", "--grace", "1"])[1] for i in range(case.server_hosts))
            args = ["ours", "--servers", servers, "--codec", case.codec,
                    "--pull-codec", case.pull_codec]
        elif case.system == "rpc":
            return _rpc_case(case, bed, run_dir, common, env, reps)
        else:
            args = ["gloo", "--init", str(run_dir / "gloo-init"), "--world", str(case.workers)]
        procs = [bed.spawn(bed.host(case.server_hosts + r), f"rank-{r}",
                           [*args, "--rank", str(r), "--out", str(outs[r]), *common],
                           program=WORKER, env=env) for r in range(case.workers)]
        _wait_all(procs)
        results = [json.loads(path.read_text()) for path in outs]
    return _row(case, results, reps)


def _wait_all(procs: list[Any]) -> None:
    for proc in procs:
        if wait_exit(proc, 900) != 0:
            raise RuntimeError(f"{proc.name} failed:\n{proc.log_tail()}")


def _rpc_case(case: Case, bed: NetBed, run_dir: Path, common: list[str], env: dict[str, str],
              reps: int) -> dict[str, Any]:
    """The rpc parameter server on host 0 (rank 0, also the master that drives the
    trainers), trainer r on host r; it writes every trainer's result."""
    out = run_dir / "rpc-ps.json"
    args = ["rpc", "--master", bed.host(0).ip, "--world", str(case.workers + 1)]
    procs = [bed.spawn(bed.host(r), "rpc-ps" if r == 0 else f"rank-{r - 1}",
                       [*args, "--rank", str(r), "--out", str(out), *common],
                       program=WORKER, env=env) for r in range(case.workers + 1)]
    _wait_all(procs)
    return _row(case, json.loads(out.read_text())["trainers"], reps)


def _row(case: Case, results: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    # A step ends when the slowest worker's does: the max over workers, step by step.
    steps = [max(r["steps"][i] for r in results) for i in range(reps)]
    # Bytes on the wire per step, each byte once: what the workers' links sent, plus for ours
    # and rpc what the server host sent them (all of it goes between a worker and the server).
    wire = sum(r["wire_tx"] + (r["wire_rx"] if case.system != "gloo" else 0) for r in results)
    return {**asdict(case), "step_s": statistics.median(steps), "steps": steps,
            "bytes_up": results[0].get("bytes_up"), "bytes_down": results[0].get("bytes_down"),
            "wire_bytes": wire}


def _speedup(rows: list[dict[str, Any]]) -> float | None:
    def step(servers: int) -> float | None:
        return next((r["step_s"] for r in rows if "error" not in r and r["system"] == "ours"
                     and r["rate"] == "1gbit"
                     and r["workers"] == 4 and r["server_hosts"] == servers
                     and r["codec"] == "none"), None)

    one, two = step(1), step(2)
    return one / two if one and two else None


def _print_pull_targets(rows: list[dict[str, Any]]) -> None:
    """Issue #14's bars at 1 Gbit/s, W=2: top-k >= 5x faster than none, faster than gloo,
    <= 5% of none's bytes; qsgd >= 3x faster than none."""
    done = [r for r in rows if "error" not in r and r["workers"] == 2 and r["rate"] == "1gbit"
            and r["server_hosts"] <= 1]
    for size in sorted({r["model_mb"] for r in done}):
        by = {(r["system"], r["codec"]): r for r in done if r["model_mb"] == size}
        none, gloo = by.get(("ours", "none")), by.get(("gloo", "none"))
        topk, qsgd = by.get(("ours", "topk:ratio=0.01")), by.get(("ours", "qsgd:bits=8"))
        if none is None:
            continue
        if topk is not None and topk.get("pull_codec") != "none":
            speed = none["step_s"] / topk["step_s"]
            share = topk["wire_bytes"] / none["wire_bytes"]
            versus = f", {gloo['step_s'] / topk['step_s']:.2f}x gloo's" if gloo else ""
            print(f"{size:g} MB: top-k {speed:.2f}x faster than none (bar 5x){versus} "
                  f"(bar > 1x), bytes {100 * share:.1f}% of none's (bar <= 5%)")
        if qsgd is not None:
            print(f"{size:g} MB: qsgd 8-bit {none['step_s'] / qsgd['step_s']:.2f}x faster "
                  f"than none (bar 3x)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hosts")
    parser.add_argument("--plan", choices=["target", "full", "pulls", "rpc"], default="target")
    parser.add_argument("--mb", type=float, default=100.0, help="model size (100)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rate", choices=RATES, default="1gbit",
                        help="every host's link, --plan rpc only (1gbit)")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    why = unavailable()
    if why is not None:
        print(f"benchmarks.hosts: no network namespaces here ({why})")
        return 2
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="ps-hosts-bench-") as tmp:
        for index, case in enumerate(plan(args.plan, args.mb, args.rate)):
            started = time.monotonic()
            try:
                row = run_case(case, Path(tmp) / f"case-{index}", args.warmup, args.reps)
            except (RuntimeError, OSError) as error:  # one failed case must not lose the rest
                print(f"{case}: failed: {str(error)[-2000:]}", flush=True)
                rows.append({**asdict(case), "error": str(error)[-2000:]})
                continue
            rows.append(row)
            where = {"ours": f"{case.server_hosts} server host(s)", "gloo": "all-reduce",
                     "rpc": "1 rpc PS host"}[case.system]
            codecs = case.codec + (f" / pull {case.pull_codec}" if case.pull_codec != "none"
                                   else "")
            print(f"{case.system:<5} {codecs:<36} {case.rate:>8}/host  W={case.workers}  "
                  f"{where:<18} {case.model_mb:>6g} MB  step {1e3 * row['step_s']:9.1f} ms  "
                  f"wire {row['wire_bytes'] / 1e6:8.2f} MB/step  "
                  f"[{time.monotonic() - started:.0f} s]", flush=True)
    _print_pull_targets(rows)
    speedup = _speedup(rows)
    if speedup is not None:
        print(f"2 server hosts vs 1 (1 Gbit/s per host, W=4, {args.mb:g} MB, none): "
              f"{speedup:.2f}x faster (bar: >= 1.6x) -> {'PASS' if speedup >= 1.6 else 'FAIL'}")
    if args.report is not None:
        args.report.write_text(json.dumps({"rows": rows, "speedup_2_vs_1": speedup,
                                           "load_average": os.getloadavg()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
