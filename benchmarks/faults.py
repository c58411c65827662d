"""Fault timings (issue #5): how fast a dead worker stops holding a sync job back, how many
steps a shard restart loses, and how many fault runs hung (it must be 0).

Each worker trial: a sync job of 4 worker processes, lease `--lease` seconds; one worker is
SIGKILLed (or SIGSTOPped) mid-training; we time its eviction and the next step closing.
Each shard trial: 2 shards checkpointing every 5 steps; shard 1 is SIGKILLed mid-training
(or dies mid-checkpoint), is restarted with the same command, and the job must finish.

    python -m benchmarks.faults [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from paramserver.cli.local_cluster import CLI, LocalCluster
from paramserver.server.checkpoint import CheckpointStore, read_checkpoint
from tests.chaos import (
    DeathTrial,
    Hang,
    WorkerSpec,
    hit_worker,
    restart_server,
    signal_process,
    spawn_worker,
    version_of,
    wait_exit,
    wait_for,
)
from tests.server_faults import faulty_server

EVERY = 5


def worker_trial(fault: signal.Signals, lease: float) -> DeathTrial:
    with tempfile.TemporaryDirectory(prefix="ps-faults-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        [(_, address)] = cluster.start_servers(1, ["--workers", "4", "--lease-timeout",
                                                   str(lease)])
        workers = [spawn_worker(cluster, address, WorkerSpec(r, 4), 10,
                                cluster.run_dir / f"w{r}.json") for r in range(4)]
        trial = hit_worker(address, workers[3], "worker-3", fault)
        if fault is signal.SIGSTOP:
            signal_process(workers[3], signal.SIGCONT)
        for worker in workers[:3] if fault is signal.SIGKILL else workers:
            if wait_exit(worker, 120) != 0:
                raise RuntimeError(worker.log_tail())
        return trial


def shard_trial(torn: bool) -> dict[str, int]:
    """Steps shard 1 had when it died vs the step it resumed from."""
    with tempfile.TemporaryDirectory(prefix="ps-faults-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        args = ["--workers", "2", "--lease-timeout", "2", "--checkpoint-dir",
                str(cluster.run_dir / "ckpt-{index}"), "--checkpoint-every", str(EVERY)]
        [(_, a0)] = cluster.start_servers(1, args)
        program = faulty_server(crash_in_checkpoint=4) if torn else CLI
        [(s1, a1)] = cluster.start_servers(1, args, first_index=1, program=program)
        workers = [spawn_worker(cluster, f"{a0},{a1}", WorkerSpec(r, 2), 10,
                                cluster.run_dir / f"w{r}.json") for r in range(2)]
        if not torn:
            wait_for("training under way", lambda: version_of(a1) >= 23, 90)
            signal_process(s1, signal.SIGKILL)
        wait_exit(s1, 90)
        died_at = version_of(a0)  # shard 0 is at most one step past where shard 1 died
        saved = read_checkpoint(CheckpointStore(cluster.run_dir / "ckpt-1").paths()[0])
        restart_server(cluster, s1, int(a1.rsplit(":", 1)[1]),
                       [a.replace("{index}", "1") for a in args])
        for worker in workers:
            if wait_exit(worker, 150) != 0:
                raise RuntimeError(worker.log_tail())
        return {"shard0_version_at_death": died_at, "resumed_from": saved.version,
                "lost_at_most": died_at - saved.version}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 trial of each kind")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/faults-*.json)")
    args = parser.parse_args()
    trials = 1 if args.quick else args.trials
    runs: dict[str, list[DeathTrial]] = {"SIGKILL": [], "SIGSTOP": []}
    hangs = 0
    shards: list[dict[str, int]] = []
    started = time.monotonic()
    for name, fault in (("SIGKILL", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
        for _ in range(trials):
            try:
                runs[name].append(worker_trial(fault, args.lease))
            except Hang as error:
                hangs += 1
                print(f"HANG ({name}): {error}")
    for torn in (False, True):
        try:
            shards.append({"torn_checkpoint": torn, **shard_trial(torn)})
        except Hang as error:
            hangs += 1
            print(f"HANG (shard restart): {error}")
    summary: dict[str, object] = {"cpus": os.cpu_count(), "lease_s": args.lease,
                                  "trials": trials, "hangs": hangs, "shard_restarts": shards}
    print(f"lease {args.lease}s, {trials} trials per fault, {os.cpu_count()} cpus")
    for name, found in runs.items():
        if not found:
            continue
        evicted = [t.evicted_after_s for t in found]
        closed = [t.step_closed_after_s for t in found]
        summary[name] = {"evicted_after_s": {"median": statistics.median(evicted),
                                             "max": max(evicted)},
                         "step_closed_after_s": {"median": statistics.median(closed),
                                                 "max": max(closed)}}
        print(f"  {name}: eviction after {statistics.median(evicted):.2f}s median "
              f"({max(evicted):.2f} max); step closed after {statistics.median(closed):.2f}s "
              f"median ({max(closed):.2f} max)")
    for shard in shards:
        print(f"  shard restart ({'torn checkpoint' if shard['torn_checkpoint'] else 'SIGKILL'}):"
              f" shard 0 at {shard['shard0_version_at_death']}, resumed from "
              f"{shard['resumed_from']}: at most {shard['lost_at_most']} steps lost "
              f"(checkpoint every {EVERY})")
    harness.write_report(harness.report_path("faults", args.report), summary)
    print(f"hangs: {hangs}  [{time.monotonic() - started:.0f} s]")
    return 1 if hangs else 0


if __name__ == "__main__":
    sys.exit(main())
