"""The codec comparison under link caps, every system behind the same tc shaper.

Runs inside the run's private network namespace (see `netcap`). First a calibration: raw
TCP through each cap, so the report shows the shaper delivers what it claims. Then our
sync step per codec and the peers' steps, cap by cap. Where no namespace can be made,
`measure(..., token_bucket=True)` caps our client alone with its token bucket and leaves
the peers out: the two would not be capped alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.suite import floor, netcap, peers
from benchmarks.suite.ours import Group, run_sync, server_args
from benchmarks.suite.plan import Plan
from benchmarks.suite.pool import WorkerPool
from benchmarks.suite.servers import start_jobs
from paramserver.cli.local_cluster import LocalCluster
from paramserver.transport import parse_bandwidth


def calibrate(pool: WorkerPool, plan: Plan, log: Any) -> list[dict[str, Any]]:
    """Raw TCP up and back through each cap: the shaper's delivered rate."""
    rows = []
    for cap in plan.caps:
        netcap.apply(cap)
        row = {**floor.tcp_floor(pool, plan.cap_model_mb, 1, plan.cap_reps), "cap": cap}
        rate = parse_bandwidth(cap)
        row["delivered_gbit_s"] = 8 * row["gbps"]
        row["delivered_over_cap"] = (row["gbps"] * 1e9 / rate) if rate else None
        rows.append(row)
        log(f"  calibration {cap:>9}: raw TCP moves {row['delivered_gbit_s']:.3f} Gbit/s "
            "(both directions together)")
    netcap.apply("unlimited")
    return rows


def measure(pool: WorkerPool, run_dir: Path, plan: Plan, token_bucket: bool,
            log: Any = print) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    calibration = [] if token_bucket else calibrate(pool, plan, log)
    group = Group(plan.cap_model_mb, plan.cap_workers, 1, plan.cap_codecs, plan.caps,
                  token_bucket)
    with LocalCluster(run_dir) as cluster:
        [servers] = start_jobs(cluster, [(1, server_args("sync", plan.cap_workers))])
        rows += run_sync(pool, cluster, servers, group, plan.cap_warmup, plan.cap_reps)
    if not token_bucket:
        for peer in plan.cap_peers:
            if peer == "gloo-allreduce":
                rows += peers.allreduce(pool, run_dir, plan.cap_model_mb, plan.cap_workers,
                                        plan.caps, plan.cap_warmup, plan.cap_reps)
            else:
                rows += peers.rpc_parameter_server(run_dir, plan.cap_model_mb,
                                                   plan.cap_workers, plan.caps,
                                                   plan.cap_warmup, plan.cap_reps)
        netcap.apply("unlimited")
    for row in rows:
        log(f"  {row['system']:<14} {row['codec']:<16} {row['cap']:>9}  step "
            f"{1e3 * row['step_s']['median']:9.1f} ms  wire {row['wire_bytes'] / 1e6:7.1f} MB")
    return {"method": "token bucket in our client (ours only)" if token_bucket else
            "tc tbf on lo in a private network namespace (every system)",
            "model_mb": plan.cap_model_mb, "workers": plan.cap_workers, "caps": list(plan.caps),
            "calibration": calibration, "rows": rows}
