"""Run a plan from start to end: every section, then the tables, the JSON and the plot.

Where a network namespace can be made, the whole run happens in one (the command re-runs
itself under `unshare --net`): the link caps then shape every system alike, and the bytes
on its loopback are the run's own, whatever else the machine is doing. Every process is
ours and is ended by pid: the pool's workers, the servers of each job (`LocalCluster`), the
bare gRPC server, the RPC peers' processes, and the namespaced child itself (SIGTERM, then
SIGKILL).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import google.protobuf
import grpc
import psutil
import torch

from benchmarks.harness import REPO
from benchmarks.suite import capped, convergence, floor, memory, netcap, ours, peers, targets
from benchmarks.suite.plan import Plan
from benchmarks.suite.plot import write_plot
from benchmarks.suite.pool import WorkerPool
from benchmarks.suite.report import Log, print_report
from paramserver.transport import DEFAULT_CHUNK_BYTES

RUN_TIMEOUT_S = 1800.0  # the full run takes about 10 minutes on 2 cores
ISOLATED_ENV = "PARAMSERVER_BENCH_NETNS"  # set in the child that runs in the namespace


def describe_machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return {"cpu_model": model, "cpu_count": os.cpu_count(),
            "memory_gib": psutil.virtual_memory().total / 2**30,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__, "chunk_bytes": DEFAULT_CHUNK_BYTES,
            "transport": "gRPC over loopback TCP (127.0.0.1)",
            "network_namespace": os.environ.get(ISOLATED_ENV) == "1",
            "load_average_at_start": os.getloadavg()}


def measure_floor(pool: WorkerPool, run_dir: Path, plan: Plan, log: Log) -> list[dict[str, Any]]:
    rows = []
    for mb in plan.floor_sizes:
        rows.append(floor.tcp_floor(pool, mb, plan.warmup, plan.reps))
        rows += [floor.grpc_floor(run_dir, mb, workers, plan.reps)
                 for workers in plan.floor_grpc_workers]
    for row in rows:
        log(f"  floor {row['system']:<11} {row['model_mb']:>5g} MB W={row['workers']}  round "
            f"{1e3 * row['round_s']['median']:8.1f} ms  {row['gbps']:.2f} GB/s")
    return rows


def measure_peers(pool: WorkerPool, run_dir: Path, plan: Plan, log: Log) -> list[dict[str, Any]]:
    rows = []
    for mb, workers in plan.peer_groups:
        for row in (peers.allreduce(pool, run_dir, mb, workers, (), plan.warmup, plan.reps)
                    + peers.rpc_parameter_server(run_dir, mb, workers, (), plan.warmup,
                                                 plan.reps)):
            rows.append(row)
            log(f"  {row['system']:<14} {mb:>5g} MB W={workers}  step "
                f"{1e3 * row['step_s']['median']:9.1f} ms")
    return rows


def measure_caps(pool: WorkerPool, run_dir: Path, plan: Plan, isolated: bool,
                 log: Log) -> dict[str, Any]:
    """tc caps for every system inside the namespace; else our token bucket, ours only."""
    if isolated:
        return capped.measure(pool, run_dir, plan, token_bucket=False, log=log)
    reason = netcap.unavailable() or "not run in a network namespace"
    log(f"  no network namespace with tc here ({reason}): caps are our client's token "
        "bucket, on ours only; the peers are compared unlimited only")
    return {**capped.measure(pool, run_dir, plan, token_bucket=True, log=log),
            "unavailable": reason}


def run_isolated(argv: list[str], timeout_s: float) -> int:
    """Run `python -m benchmarks.suite ARGV` again inside a fresh network namespace; its
    exit code."""
    child = subprocess.Popen(netcap.command([sys.executable, "-m", "benchmarks.suite", *argv]),
                             env={**os.environ, ISOLATED_ENV: "1"}, stdin=subprocess.DEVNULL,
                             cwd=REPO)
    try:
        return child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"bench: no result after {timeout_s:.0f} s; stopping it", flush=True)
        return 124
    finally:
        if child.poll() is None:  # SIGTERM lets it stop its own processes first
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(30.0)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10.0)


def main(plan: Plan, argv: list[str], report_path: Path | None, plot_path: Path | None,
         log: Log = print) -> int:
    """The entry point of `python -m benchmarks.suite` and `paramserver bench` (`argv`: its
    arguments, to re-run with)."""
    if os.environ.get(ISOLATED_ENV) == "1":
        netcap.bring_up_loopback()
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: end our processes
        run(plan, report_path, plot_path, isolated=True, log=log)
        return 0
    if netcap.unavailable() is None:
        return run_isolated(argv, RUN_TIMEOUT_S)
    run(plan, report_path, plot_path, isolated=False, log=log)
    return 0


def run(plan: Plan, report_path: Path | None, plot_path: Path | None, isolated: bool,
        log: Log = print) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"plan": plan.name, "warmup": plan.warmup, "reps": plan.reps,
                              "machine": describe_machine()}
    sections: dict[str, float] = {}
    clock = time.monotonic()

    def done(section: str) -> None:
        nonlocal clock
        sections[section] = time.monotonic() - clock
        clock = time.monotonic()
        log(f"  [{section}: {sections[section]:.0f} s]")

    with tempfile.TemporaryDirectory(prefix="ps-bench-") as tmp:
        run_dir = Path(tmp)
        log(f"starting {plan.pool_size} worker processes")
        with WorkerPool(plan.pool_size) as pool:
            log("floor")
            result["floor"] = measure_floor(pool, run_dir, plan, log)
            done("floor")
            log("ours")
            result["ours"] = ours.measure(pool, run_dir / "ours", plan.sync_groups,
                                          plan.async_groups, plan.warmup, plan.reps,
                                          plan.async_windows, plan.async_window_s, log)
            done("ours")
            log("peers")
            result["peers"] = measure_peers(pool, run_dir, plan, log)
            done("peers")
            log("memory soak")
            result["soak"] = memory.soak(pool, run_dir / "soak", plan.soak_model_mb,
                                         plan.soak_workers, plan.soak_pushes, log)
            done("soak")
            log("sync vs async vs SSP, one worker slowed 2x")
            result["convergence"] = convergence.measure(
                pool, run_dir / "convergence", plan.convergence_modes,
                plan.convergence_workers, plan.target_accuracy, plan.convergence_max_s,
                plan.convergence_reps, log)
            done("convergence")
            log("link caps")
            result["caps"] = measure_caps(pool, run_dir / "caps", plan, isolated, log)
            done("caps")
    result["section_s"] = sections
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["targets"] = targets.evaluate(result)
    result["wall_s"] = time.monotonic() - started
    print_report(result, log)
    if plot_path is not None:
        result["plot"] = str(plot_path)
        why_not = write_plot(result, plot_path)
        if why_not:
            result["plot"] = None
            log(why_not)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(result, indent=1) + "\n")
    return result
