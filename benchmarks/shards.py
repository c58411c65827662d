"""Push+pull throughput of a 100 MB model sharded over 1, 2 and 4 servers (issue #3).

One worker process (this one) steps a synchronous job whose model is split by the partition
plan over N `paramserver serve` processes; the client pushes to and pulls from all shards
concurrently. Throughput = model bytes up + down per step / step time.

    python -m benchmarks.shards [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch

from benchmarks import harness
from benchmarks.blob import Blob
from benchmarks.measure import stat
from paramserver.cli.local_cluster import LocalCluster
from paramserver.process_tuning import tune_process
from workers import ParameterClient

SHARDS = [1, 2, 4]
MODEL_MB = 100
WARMUP, REPS = 3, 5


def measure(cluster: LocalCluster, shards: int, model_mb: float, reps: int,
            first_index: int) -> dict[str, object]:
    servers = cluster.start_servers(shards, ["--mode", "sync", "--workers", "1", "--lr", "0.001",
                                             "--momentum", "0"], first_index=first_index)
    model = Blob(model_mb)
    try:
        with ParameterClient([a for _, a in servers], "bench", timeout_s=600) as client:
            client.attach(model)
            model.set_gradients()
            for _ in range(WARMUP):
                client.step()
            samples = []
            for _ in range(reps):
                t0 = time.perf_counter()
                client.step()
                samples.append(time.perf_counter() - t0)
            plan_bytes = client.plan.shard_bytes() if client.plan else []
    finally:
        for managed, _ in servers:
            cluster.stop(managed)
    model_bytes = sum(p.numel() * 4 for p in model.tensors)
    step = stat(samples)
    row = {"shards": shards, "model_bytes": model_bytes, "step_s": step,
           "gbps": 2 * model_bytes / step["median"] / 1e9, "shard_bytes": plan_bytes}
    print(f"  {shards} shard(s)  step {step['median']*1e3:7.1f} ms (min {step['min']*1e3:.1f}, "
          f"max {step['max']*1e3:.1f})  {row['gbps']:.2f} GB/s  shard MB "
          f"{[round(b / 1e6, 1) for b in plan_bytes]}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="an 8 MB model, 2 reps")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/shards-*.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_process()
    model_mb, reps = (8, 2) if args.quick else (MODEL_MB, REPS)
    print(f"sync push+pull of a {model_mb} MB model, 1 worker, {os.cpu_count()} cores, "
          f"median of {reps} after {WARMUP} warm-up steps:")
    with LocalCluster(Path(tempfile.mkdtemp(prefix="bench-shards-"))) as cluster:
        rows = [measure(cluster, n, model_mb, reps, first_index=10 * n) for n in SHARDS]
    harness.write_report(harness.report_path("shards", args.report),
                         {"cpus": os.cpu_count(), "grpcio": grpc.__version__, "rows": rows})
    base = rows[0]["gbps"]
    print("speed-up over 1 shard: " + ", ".join(
        f"{r['shards']} shards x{r['gbps'] / base:.2f}" for r in rows))  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    sys.exit(main())
