"""What the server's receive window costs a push (issue #14): W worker hosts (default 1)
each push a Blob model in one stream to a server host (sync) on the namespace test bed, each
host's
link capped (1 Gbit/s), with a round trip added by delaying every packet the server
host receives (`testbed.delay_queue`: NFQUEUE, since the kernel has no sch_netem), for
each server --recv-window. Prints the push's throughput (worker 0's median push) beside the
window's bound (window / round trip) and the link's, and the median sync step (push, then
pull; the slowest worker's).

    python -m benchmarks.window [--mb 32] [--reps 4] [--rtt-ms 0,40] [--windows 2MiB,8MiB]
                                [--workers 1] [--rate 1gbit] [--tcp-buffers 33554432]
                                [--report FILE]

`--tcp-buffers`: the namespaces' tcp_rmem/tcp_wmem maximum (0: the kernel's), so that TCP's
own buffers do not bound a long link first. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO
from paramserver.transport import parse_bandwidth, parse_size
from testbed import LinkSpec, NetBed
from testbed.netns import in_ns
from tests.chaos import wait_exit

PROGRAM = (sys.executable, "-m")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Inside a worker host: attach, then time push() and the pull after it, reps times."""
    from benchmarks.blob import Blob
    from workers import ParameterClient

    model = Blob(args.mb)
    pushes, steps = [], []
    with ParameterClient(args.servers, f"worker-{args.rank}", timeout_s=300.0) as client:
        client.attach(model)
        for rep in range(args.reps + 1):  # the first warms the connection up
            started = time.perf_counter()
            client.push()
            pushed = time.perf_counter()
            client.pull(client.version + 1)
            if rep:
                pushes.append(pushed - started)
                steps.append(time.perf_counter() - started)
    return {"push_s": pushes, "step_s": steps}


def run_case(run_dir: Path, rate: str, rtt_ms: float, window: int, mb: float, reps: int,
             tcp_buffers: int, workers: int = 1) -> dict[str, Any]:
    with NetBed(run_dir, 1 + workers, LinkSpec(rate)) as bed:
        server_host = bed.host(0)
        if tcp_buffers:
            for host in bed.members:
                for key in ("tcp_rmem", "tcp_wmem"):
                    in_ns(host.ns, "sysctl", "-qw", f"net.ipv4.{key}=4096 131072 {tcp_buffers}")
        env = {"PYTHONPATH": str(REPO)}
        if rtt_ms:
            # on the server host only (not the bed's LinkSpec delay, which is on every
            # host): the round trip is rtt_ms
            bed.start_delay_queue(server_host, rtt_ms)
        _, address = bed.start_server(server_host, [
            "--workers", str(workers), "--lr", "0.001", "--momentum", "0.9",
            "--recv-window", str(window)])
        procs = [bed.spawn(bed.host(1 + r), f"worker-{r}", [
            "benchmarks.window", "worker", "--servers", address, "--mb", str(mb),
            "--reps", str(reps), "--rank", str(r), "--out", str(run_dir / f"worker-{r}.json")],
            program=PROGRAM, env=env) for r in range(workers)]
        for proc in procs:
            if wait_exit(proc, 600) != 0:
                raise RuntimeError(f"{proc.name} failed:\n{proc.log_tail()}")
        results = [json.loads((run_dir / f"worker-{r}.json").read_text())
                   for r in range(workers)]
    pushes = results[0]["push_s"]
    push_s = statistics.median(pushes)
    step_s = statistics.median(max(s) for s in zip(*(r["step_s"] for r in results)))
    link = parse_bandwidth(rate)
    bound = window / (rtt_ms / 1e3) if rtt_ms else None
    return {"rate": rate, "rtt_ms": rtt_ms, "window": window, "mb": mb, "workers": workers,
            "push_s": push_s, "pushes": pushes, "mb_per_s": mb / push_s, "step_s": step_s,
            "window_bound_mb_per_s": None if bound is None else bound / 1e6,
            "link_mb_per_s": None if link is None else link / 1e6, "tcp_buffers": tcp_buffers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("worker")
    inner.add_argument("--servers", required=True)
    inner.add_argument("--mb", type=float, required=True)
    inner.add_argument("--reps", type=int, required=True)
    inner.add_argument("--out", type=Path, required=True)
    inner.add_argument("--rank", type=int, default=0)
    parser.add_argument("--mb", type=float, default=32.0)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--rtt-ms", default="0,40")
    parser.add_argument("--windows", default="2MiB,8MiB")
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tcp-buffers", type=int, default=32 << 20)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    if args.command == "worker":
        args.out.write_text(json.dumps(worker(args)))
        return 0
    rows = []
    for rtt in (float(t) for t in args.rtt_ms.split(",")):
        for window in (parse_size(w) for w in args.windows.split(",")):
            with tempfile.TemporaryDirectory(prefix="ps-window-") as tmp:
                row = run_case(Path(tmp), args.rate, rtt, window, args.mb, args.reps,
                               args.tcp_buffers, args.workers)
            rows.append(row)
            bound = row["window_bound_mb_per_s"]
            print(f"rtt {rtt:5.1f} ms  window {window / 2**20:5.1f} MiB  push "
                  f"{row['push_s'] * 1e3:7.1f} ms = {row['mb_per_s']:6.1f} MB/s  (window / rtt: "
                  f"{'-' if bound is None else f'{bound:.0f}'} MB/s, link "
                  f"{row['link_mb_per_s'] or '-'} MB/s); W={args.workers} step "
                  f"{row['step_s'] * 1e3:.1f} ms", flush=True)
    if args.report:
        args.report.write_text(json.dumps({"rows": rows, "argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
