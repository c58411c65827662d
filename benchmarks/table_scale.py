"""Row-sparse tables at scale (issue #16): a 100M x 64 table (25.6 GB dense) on 2 server
processes against a 100k x 64 one, same batch and id distribution.

One worker (this process) attaches an EmbeddingBag(rows, 64, sparse=True, device="meta")
plus a linear head to a sync job of 2 `paramserver serve` processes and trains STEPS steps
of BATCH bags of BAG ids drawn Zipf(1.1) (rank r -> id hash(r) % rows). Per table size it
prints the median step time, bytes moved per step, rows touched, the servers' RSS growth
and `status`'s stored rows and bytes, and the worker's RSS growth.

    python -m benchmarks.table_scale [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from benchmarks import harness
from benchmarks.measure import stat
from paramserver.cli.local_cluster import LocalCluster
from workers import attach

DIM, BATCH, BAG, ZIPF = 64, 512, 4, 1.1
SIZES = [100_000, 100_000_000]
STEPS, WARMUP = 30, 3


class Model(nn.Module):
    def __init__(self, rows: int, sparse: bool = True) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(rows, DIM, mode="sum", sparse=sparse,
                                   device="meta" if sparse else None)
        self.head = nn.Linear(DIM, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids)).squeeze(-1)


def batches(rows: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Zipf ranks, scattered over the id space by a fixed odd multiplier (mod rows)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ranks = rng.zipf(ZIPF, (BATCH, BAG)) - 1
        out.append(torch.from_numpy((ranks * 0x9E3779B1) % rows))
    return out


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def measure(cluster: LocalCluster, rows: int, steps: int, first_index: int,
            sparse: bool = True) -> dict[str, object]:
    """One table size; `sparse=False`: today's alternative, the table as a dense tensor
    pushed and pulled whole every step."""
    servers = cluster.start_servers(2, ["--mode", "sync", "--workers", "1", "--lr", "0.01",
                                        "--momentum", "0"], first_index=first_index)
    pids = [m.process.pid for m, _ in servers]
    data = batches(rows, WARMUP + steps)
    try:
        server_before, worker_before = [rss(p) for p in pids], rss(os.getpid())
        model = Model(rows, sparse)
        with attach(model, [a for _, a in servers], worker_id="bench", timeout_s=120,
                    table_optimizer="adagrad:lr=0.05") as ps:
            samples, moved, touched = [], 0, 0
            for index, ids in enumerate(data):
                connections = ps.client.connections
                before = sum(c.bytes_pushed + c.bytes_pulled for c in connections)
                started = time.perf_counter()
                model.zero_grad()
                model(ids).square().mean().backward()
                ps.step()
                if index >= WARMUP:
                    samples.append(time.perf_counter() - started)
                    moved += sum(c.bytes_pushed + c.bytes_pulled for c in connections) - before
                    touched += len(torch.unique(ids))
            statuses = [t for c in ps.client.connections for t in c.status().tables]
            if not sparse:  # what the dense table occupies on the servers
                stored_dense = [c.status().layout for c in ps.client.connections]
        server_after, worker_after = [rss(p) for p in pids], rss(os.getpid())
    finally:
        for managed, _ in servers:
            cluster.stop(managed)
    step = stat(samples)
    server_growth = [a - b for a, b in zip(server_after, server_before)]
    stored_rows = [t.materialized_rows for t in statuses] if sparse else [rows]
    stored_bytes = [t.bytes for t in statuses] if sparse else [
        layout.nbytes if layout else 0 for layout in stored_dense]
    print(f"  {rows:>11} rows {'sparse' if sparse else 'DENSE '}: step {step['median'] * 1e3:6.1f} ms  "
          f"{moved / steps / 1e3:7.1f} kB/step  {touched / steps:.0f} unique ids/step  "
          f"stored rows {stored_rows}  stored MB {[round(b / 1e6, 2) for b in stored_bytes]}"
          f"  server RSS +MB {[round(g / 2**20) for g in server_growth]}  "
          f"worker RSS +MB {round((worker_after - worker_before) / 2**20)}", flush=True)
    row = {"rows": rows, "sparse": sparse, "step_s": step, "bytes_per_step": moved / steps,
           "unique_ids_per_step": touched / steps, "stored_rows": stored_rows,
           "stored_bytes": stored_bytes, "server_rss_growth": server_growth,
           "worker_rss_growth": worker_after - worker_before}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 steps per size")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/table_scale-*.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 5 if args.quick else STEPS
    print(f"row-sparse table {DIM} wide, 2 shards, sync, 1 worker, batch {BATCH} x {BAG} "
          f"Zipf({ZIPF}) ids, median of {steps} steps after {WARMUP}, {os.cpu_count()} cores:")
    with LocalCluster(Path(tempfile.mkdtemp(prefix="bench-tables-"))) as cluster:
        rows = [measure(cluster, n, steps, first_index=10 * i) for i, n in enumerate(SIZES)]
        rows.append(measure(cluster, SIZES[0], steps, first_index=30, sparse=False))
    harness.write_report(harness.report_path("table_scale", args.report), {"rows": rows})
    small, large, dense = (r["step_s"]["median"] for r in rows)  # type: ignore[index]
    bytes_small, bytes_dense = rows[0]["bytes_per_step"], rows[2]["bytes_per_step"]
    print(f"step time 100M / 100k rows: x{large / small:.2f} (target <= 1.3); "
          f"dense size of the large table {SIZES[-1] * DIM * 4 / 1e9:.1f} GB")
    print(f"100k rows, dense table pushed and pulled whole vs row-sparse: bytes/step "
          f"x{bytes_dense / bytes_small:.0f} (target >= 10), step time "  # type: ignore[operator]
          f"x{dense / small:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
