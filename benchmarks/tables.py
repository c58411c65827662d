"""Sparse embedding tables against what a user has today, on the same CTR data (issue #16).

Per step of a 2-worker synchronous job on the same batches (per-worker batch BATCH of the
synthetic CTR data set, `workers.ctr_data`), with the DLRM-like model (`workers.ctr_model`):

    (a) ps-dense    the tables registered as dense tensors through our parameter server:
                    every step pushes every table's whole gradient and pulls it back
    (b) gloo        all-reduce of the dense gradient with torch.distributed (gloo, 2
                    processes), SGD applied locally: DDP's way
    (c) ps-sparse   row-sparse tables (`workers.attach(..., tables=...)`): each step pulls the
                    rows the batch touches and pushes their gradient rows; then the same
                    step with a 100-million-row table against a 100k-row one

Bytes are payload bytes per step per worker, sent plus received: counted by our client for
(a) and (c) (`ServerConnection.bytes_pushed/_pulled`), and for (b) computed from the
algorithm (a ring all-reduce sends and receives 2 (W-1)/W of the gradient). `lo total` is
the loopback counter's delta over the timed stage per step: every byte of the job once,
servers included (a parameter server moves each worker's bytes through the server, so its
total is W x the per-worker figure; all-reduce's is W/2 x), and any other process's traffic
on this network namespace too. `floor` is what a sparse step must move at least: the unique
ids of the batch, their rows down and their gradient rows up, and the dense MLP's gradient
up and parameters down. Step time: the slowest worker's, median over the timed steps.

    python -m benchmarks.tables [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.measure import stat, wire_bytes
from paramserver.cli.local_cluster import run_in_processes

SPEC = "small"  # tables of 1k, 10k, 100k and 1M rows (workers.ctr_data.SPECS)
QUICK_SPEC = "tiny"
DIM, HIDDEN = 16, 64
BATCH, WORKERS = 256, 2
WARMUP, REPS = 2, 8
QUICK_WARMUP, QUICK_REPS = 1, 3
LR = 0.01  # SGD everywhere: the optimizer's cost is not what is compared
HUGE_ROWS, SMALL_ROWS = 100_000_000, 100_000  # (c): the step at two declared sizes
TIMEOUT_S = 900.0


def sparse_tables_available() -> bool:
    """Whether this checkout has the row-sparse path (`workers.attach(tables=...)`)."""
    from workers import attach

    return "tables" in inspect.signature(attach).parameters


def _spec(name: str, rows: tuple[int, ...] | None = None) -> Any:
    from workers.ctr_data import SPECS

    spec = SPECS[name]
    return spec if rows is None else dataclasses.replace(spec, table_rows=rows)


def _batch(spec: Any, step: int, rank: int) -> Any:
    """The batch of `rank` at `step`: the same examples in every configuration."""
    from workers.ctr_data import TRAIN, examples

    start = (step * WORKERS + rank) * BATCH
    return examples(spec, TRAIN, start, start + BATCH)


def _model(spec: Any, sparse: bool) -> Any:
    from workers.ctr_model import ctr_model

    return ctr_model(spec.table_rows, DIM, spec.dense_features, HIDDEN, sparse=sparse,
                     embedding_device="meta" if sparse else None)


def _forward_backward(model: Any, batch: Any) -> None:
    import torch

    from workers.ctr_model import batch_tensors

    ids, dense, labels = batch_tensors(batch)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.binary_cross_entropy_with_logits(model(ids, dense), labels).backward()


def ps_worker(rank: int, address: str, spec: Any, sparse: bool, warmup: int,
              reps: int) -> dict[str, Any]:
    """One worker of (a) or (c): attach, then time each step and count its bytes."""
    import torch

    import workers

    torch.set_num_threads(1)
    model = _model(spec, sparse)
    extra: dict[str, Any] = {"table_optimizer": f"sgd:lr={LR}"} if sparse else {}
    steps, moved, lo = [], [], 0
    with workers.attach(model, address, worker_id=f"bench-{rank}", world_size=WORKERS,
                        overlap=False, timeout_s=TIMEOUT_S, **extra) as ps:
        connections = ps.client.connections
        for index in range(warmup + reps):
            if index == warmup:
                lo = wire_bytes()
            batch = _batch(spec, index, rank)
            before = sum(c.bytes_pushed + c.bytes_pulled for c in connections)
            started = time.perf_counter()
            _forward_backward(model, batch)
            ps.step(num_samples=BATCH)
            if index >= warmup:
                steps.append(time.perf_counter() - started)
                moved.append(sum(c.bytes_pushed + c.bytes_pulled for c in connections) - before)
        lo = wire_bytes() - lo
    return {"steps": steps, "bytes": moved, "lo_bytes": lo}


def gloo_worker(rank: int, init_file: str, spec: Any, warmup: int,
                reps: int) -> dict[str, Any]:
    """One rank of (b): dense gradients all-reduced, SGD applied locally."""
    import torch
    import torch.distributed as dist

    from benchmarks.suite.peers import allreduce_step

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORKERS)
    try:
        model = _model(spec, sparse=False)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=LR)
        steps, lo = [], 0
        for index in range(warmup + reps):
            if index == warmup:
                dist.barrier()
                lo = wire_bytes()
            batch = _batch(spec, index, rank)
            started = time.perf_counter()
            _forward_backward(model, batch)
            allreduce_step(params, optimizer, WORKERS)
            if index >= warmup:
                steps.append(time.perf_counter() - started)
        dist.barrier()
        lo = wire_bytes() - lo
        grad_bytes = 4 * sum(p.numel() for p in params)
        ring = 2 * 2 * (WORKERS - 1) / WORKERS * grad_bytes  # sent + received per rank
        return {"steps": steps, "bytes": [int(ring)] * len(steps), "lo_bytes": lo}
    finally:
        dist.destroy_process_group()


def floor_bytes(spec: Any, steps: range) -> float:
    """The least a sparse step moves per worker: unique ids (8 bytes each) with their rows
    down and their gradient rows up (float32), summed over the tables, plus the dense part
    (the MLP's gradient up, its parameters down); mean over `steps`."""
    model = _model(spec, sparse=True)
    dense = 2 * 4 * sum(p.numel() for n, p in model.named_parameters()
                        if not n.startswith("tables."))
    per_step = []
    for step in steps:
        total = 0
        for rank in range(WORKERS):
            ids = _batch(spec, step, rank).ids
            unique = sum(len(np.unique(ids[:, t])) for t in range(ids.shape[1]))
            total += unique * (8 + 2 * 4 * DIM)
        per_step.append(total / WORKERS + dense)
    return float(np.mean(per_step))


def _row(name: str, spec: Any, results: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    steps = [max(times) for times in zip(*(r["steps"] for r in results))]
    per_worker = [float(np.mean(r["bytes"])) for r in results]
    return {"config": name, "table_rows": list(spec.table_rows), "step_s": stat(steps),
            "bytes_per_step": float(np.mean(per_worker)),
            "lo_bytes_per_step": max(r["lo_bytes"] for r in results) / reps}


def run_ps(run_dir: Path, name: str, spec: Any, sparse: bool, warmup: int,
           reps: int) -> dict[str, Any]:
    command = [*harness.CLI, "serve", "--port", "0", "--mode", "sync", "--workers",
               str(WORKERS), "--lr", str(LR), "--momentum", "0"]
    with harness.serving(command, run_dir, name) as server:
        results = run_in_processes(ps_worker, [(rank, server.address, spec, sparse, warmup,
                                                reps) for rank in range(WORKERS)], TIMEOUT_S)
    return _row(name, spec, results, reps)


def run_gloo(run_dir: Path, spec: Any, warmup: int, reps: int) -> dict[str, Any]:
    init_file = run_dir / f"gloo-{time.monotonic_ns()}"
    results = run_in_processes(gloo_worker, [(rank, str(init_file), spec, warmup, reps)
                                             for rank in range(WORKERS)], TIMEOUT_S)
    return _row("gloo", spec, results, reps)


def _print(row: dict[str, Any]) -> None:
    step = row["step_s"]
    print(f"  {row['config']:<18} rows {row['table_rows']}  step {1e3 * step['median']:8.1f} ms "
          f"(min {1e3 * step['min']:.1f}, max {1e3 * step['max']:.1f})  "
          f"{row['bytes_per_step'] / 1e6:9.3f} MB/step/worker  "
          f"lo total {row['lo_bytes_per_step'] / 1e6:9.3f} MB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"the {QUICK_SPEC} tables, {QUICK_REPS} reps (a smoke test)")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/tables-*.json)")
    args = parser.parse_args()
    spec = _spec(QUICK_SPEC if args.quick else SPEC)
    warmup, reps = (QUICK_WARMUP, QUICK_REPS) if args.quick else (WARMUP, REPS)
    sparse = sparse_tables_available()
    floor = floor_bytes(spec, range(warmup, warmup + reps))
    print(f"CTR tables {spec.table_rows} x {DIM}, {WORKERS} workers x batch {BATCH}, sync, "
          f"{warmup} warm-up + {reps} timed steps, {os.cpu_count()} cpus; sparse floor "
          f"{floor / 1e6:.3f} MB/step/worker", flush=True)
    rows: list[dict[str, Any]] = []
    not_measured: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        run_dir = Path(tmp)
        for measure in (lambda: run_ps(run_dir, "ps-dense", spec, False, warmup, reps),
                        lambda: run_gloo(run_dir, spec, warmup, reps)):
            rows.append(measure())
            _print(rows[-1])
        if sparse:
            rows += sparse_rows(run_dir, spec, warmup, reps, args.quick)
        else:
            not_measured.append("(c) ps-sparse and the 100M-row vs 100k-row step: this "
                                "checkout has no row-sparse tables (workers.attach(tables=))")
            print(f"  not measured: {not_measured[-1]}")
    summarise(rows, floor)
    harness.write_report(harness.report_path("tables", args.report), {
        "cpus": os.cpu_count(), "dim": DIM, "batch": BATCH, "workers": WORKERS,
        "warmup": warmup, "reps": reps, "floor_bytes_per_step": floor, "rows": rows,
        "not_measured": not_measured})
    return 0


def sparse_rows(run_dir: Path, spec: Any, warmup: int, reps: int,
                quick: bool) -> list[dict[str, Any]]:
    """(c): the same tables row-sparse, then the step at 100k and at 100M rows (the last
    table's declared size; the ids follow the same power law over each size)."""
    rows = [run_ps(run_dir, "ps-sparse", spec, True, warmup, reps)]
    _print(rows[-1])
    if quick:
        return rows
    for declared in (SMALL_ROWS, HUGE_ROWS):
        sized = _spec("huge", (*_spec("huge").table_rows[:-1], declared))
        rows.append(run_ps(run_dir, f"ps-sparse-{declared:.0e}", sized, True, warmup, reps))
        _print(rows[-1])
    return rows


def summarise(rows: list[dict[str, Any]], floor: float) -> None:
    by = {r["config"]: r for r in rows}
    dense, gloo = by["ps-dense"], by["gloo"]
    line = (f"per step: ps-dense {dense['bytes_per_step'] / 1e6:.2f} MB "
            f"{1e3 * dense['step_s']['median']:.0f} ms; gloo {gloo['bytes_per_step'] / 1e6:.2f} "
            f"MB {1e3 * gloo['step_s']['median']:.0f} ms")
    sparse = by.get("ps-sparse")
    if sparse is not None:
        line += (f"; ps-sparse {sparse['bytes_per_step'] / 1e6:.3f} MB "
                 f"{1e3 * sparse['step_s']['median']:.0f} ms (bytes x"
                 f"{dense['bytes_per_step'] / sparse['bytes_per_step']:.0f} fewer than "
                 f"ps-dense, x{gloo['bytes_per_step'] / sparse['bytes_per_step']:.0f} than "
                 f"gloo; step x{dense['step_s']['median'] / sparse['step_s']['median']:.1f} "
                 f"and x{gloo['step_s']['median'] / sparse['step_s']['median']:.1f} faster)")
    small, huge = by.get(f"ps-sparse-{SMALL_ROWS:.0e}"), by.get(f"ps-sparse-{HUGE_ROWS:.0e}")
    if small is not None and huge is not None:
        line += (f"; 100M-row step / 100k-row step "
                 f"{huge['step_s']['median'] / small['step_s']['median']:.2f}")
    print(line + f"; sparse floor {floor / 1e6:.3f} MB")


if __name__ == "__main__":
    sys.exit(main())
