"""Sync vs async (vs SSP) with one worker slowed 2x: wall time to a target accuracy.

W workers train the built-in digits MLP (split data) against one server. Every worker's
step includes a fixed emulated compute time (a sleep, so it costs no CPU on this 2-core
machine); worker 0 sleeps twice as long: the straggler. Sync waits for it every step;
async lets the others run ahead; SSP (when `paramserver serve` has it) bounds how far.
An observer in this process pulls the server's parameters every EVAL_EVERY_S and scores
them on the held-out digits; the figure is the time from the moment all workers are
attached to the first score at or above the target.

Learning rates: sync applies the mean of W gradients once per step at LR; async and SSP
apply each single push at LR / W, so W pushes move the model as far as one sync step (at
LR per push, async with momentum 0.9 diverged here: best accuracy 0.46 in 30 s).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.measure import stat
from benchmarks.suite.pool import WorkerPool
from benchmarks.suite.servers import Servers, start_jobs, stop
from paramserver.cli.local_cluster import LocalCluster
from paramserver.types import Role

COMPUTE_S = 0.02  # emulated forward+backward of every worker; the straggler takes twice this
SLOW_RANK = 0
BATCH = 32
LR, MOMENTUM = 0.1, 0.9  # the CLI's defaults
EVAL_EVERY_S = 0.1
CALL_TIMEOUT_S = 30.0
SSP_STALENESS = 2


def ssp_server_args() -> list[str] | None:
    """`--mode ssp` (plus a staleness bound, if the flag exists) when `paramserver serve
    --help` lists an ssp mode; None when it does not."""
    from paramserver.cli.main import build_parser

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = help_text.getvalue()
    if not re.search(r"\bssp\b", text):
        return None
    flag = re.search(r"(--[a-z-]*stale[a-z-]*)", text)
    return ["--mode", "ssp", *([flag.group(1), str(SSP_STALENESS)] if flag else [])]


def train_worker(rank: int, workers: int, barrier: Any, shared: dict[str, Any],
                 addresses: list[str]) -> int:
    """Train until told to stop; returns the steps taken.

    The stop is a step count, `shared["stop_at"]`, set once under `shared["lock"]`, the lock
    under which every worker records its progress and checks it before each step: nobody
    starts a step past it, and every worker gets there, so a sync step never waits for a
    worker that has left."""
    from workers import ParameterClient
    from workers.data import epoch_batches, load_digits_dataset, shard_indices, steps_per_epoch
    from workers.models import digits_mlp

    data = load_digits_dataset()
    model = digits_mlp(seed=0)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.x_train)
    mine = shard_indices(n, rank, workers, "split")
    per_epoch = steps_per_epoch(n, workers, "split", BATCH)
    delay = COMPUTE_S * (2 if rank == SLOW_RANK else 1)
    lock, progress, stop_at = shared["lock"], shared["progress"], shared["stop_at"]
    steps, epoch = 0, 0
    with ParameterClient(addresses, f"worker-{rank}", timeout_s=CALL_TIMEOUT_S) as client:
        client.attach(model)
        barrier.wait(CALL_TIMEOUT_S)
        if rank == 0:
            shared["started"].value = time.monotonic()
        while True:
            for batch in epoch_batches(mine, per_epoch, BATCH, epoch * 1_009 + rank):
                with lock:
                    progress[rank] = steps
                    if steps >= stop_at.value:
                        return steps
                model.zero_grad(set_to_none=True)
                loss_fn(model(data.x_train[batch]), data.y_train[batch]).backward()
                time.sleep(delay)
                client.step(num_samples=len(batch))
                steps += 1
            epoch += 1


def _score_until(addresses: list[str], shared: dict[str, Any], running: Any, target: float,
                 max_s: float) -> dict[str, Any]:
    """Score the server's model every EVAL_EVERY_S from the start until it reaches
    `target` or `max_s` passes."""
    from workers import ParameterClient
    from workers.data import load_digits_dataset
    from workers.models import accuracy, digits_mlp

    data = load_digits_dataset()
    model = digits_mlp()
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while shared["started"].value == 0.0:
        if running.ready():
            running.get()  # a worker failed before the start: raise its error
        if time.monotonic() > deadline:
            raise RuntimeError("the training workers did not start")
        time.sleep(0.01)
    out: dict[str, Any] = {"time_s": None, "best_accuracy": 0.0}
    with ParameterClient(addresses, "observer", role=Role.OBSERVER,
                         timeout_s=CALL_TIMEOUT_S) as client:
        client.attach(model)
        while not running.ready():
            client.pull(0)
            elapsed = time.monotonic() - shared["started"].value
            score = accuracy(model, data.x_test, data.y_test)
            out["best_accuracy"] = max(out["best_accuracy"], score)
            out["version"] = client.version
            if score >= target:
                out["time_s"] = elapsed
                out["steps_at_target"] = shared["progress"][:]
                break
            if elapsed > max_s:
                break
            time.sleep(EVAL_EVERY_S)
    return out


def _server_args(mode_args: list[str], mode: str, workers: int) -> list[str]:
    lr = LR if mode == "sync" else LR / workers  # one push is 1/W of a sync step's gradient
    return [*mode_args, "--workers", str(workers), "--lr", str(lr), "--momentum",
            str(MOMENTUM), "--grace", "0"]


def time_to_target(pool: WorkerPool, cluster: LocalCluster, servers: Servers, mode: str,
                   workers: int, target: float, max_s: float) -> dict[str, Any]:
    """One run of `mode`: seconds to `target` (None if not within `max_s`), and the steps
    each worker had taken by then."""
    [address] = servers.addresses
    manager = pool.manager
    shared = {"lock": manager.Lock(), "progress": manager.list([0] * workers),
              "stop_at": manager.Value("i", 1 << 30), "started": manager.Value("d", 0.0)}
    barrier = manager.Barrier(workers)
    try:
        running = pool.start(train_worker, [(rank, workers, barrier, shared, [address])
                                            for rank in range(workers)])
        try:
            out = _score_until([address], shared, running, target, max_s)
        finally:  # stop the workers even when scoring failed, or the pool stays busy
            with shared["lock"]:
                # Async workers may stop anywhere; sync (and SSP) workers must all reach
                # the step the furthest one is in, or it would wait for them forever.
                shared["stop_at"].value = (0 if mode == "async"
                                           else max(shared["progress"][:]) + 1)
        steps = running.get(CALL_TIMEOUT_S)
    finally:
        stop(cluster, servers)
    return {"mode": mode, **out, "steps_at_stop": steps}


def measure(pool: WorkerPool, run_dir: Path, modes: tuple[str, ...], workers: int,
            target: float, max_s: float, reps: int, log: Any = print) -> dict[str, Any]:
    """Median time to target per mode over `reps` runs; SSP only if the server offers it."""
    servers: dict[str, list[str]] = {mode: ["--mode", mode] for mode in modes
                                     if mode != "ssp"}
    note = None
    if "ssp" in modes:
        ssp = ssp_server_args()
        if ssp is None:
            note = "SSP skipped: `paramserver serve --help` lists no ssp mode"
            log(f"  {note}")
        else:
            servers["ssp"] = ssp
    rows = []
    with LocalCluster(run_dir) as cluster:
        runs = [(mode, rep) for mode in servers for rep in range(reps)]
        started = start_jobs(cluster, [(1, _server_args(servers[mode], mode, workers))
                                       for mode, _ in runs])
        for mode, args in servers.items():
            done = [time_to_target(pool, cluster, job, mode, workers, target, max_s)
                    for (run_mode, _), job in zip(runs, started) if run_mode == mode]
            reached = [r["time_s"] for r in done if r["time_s"] is not None]
            timing = stat(reached) if reached else None
            rows.append({"mode": mode, "server_args": _server_args(args, mode, workers),
                         "runs": done, "reached": len(reached), "time_to_target_s": timing})
            log(f"  {mode:<5} time to {target:.2f}: " + (
                f"{timing['median']:.2f} s ({len(reached)}/{reps} runs)"
                if timing else f"not reached in {max_s:.0f} s"))
    return {"workers": workers, "slow_rank": SLOW_RANK, "compute_s": COMPUTE_S,
            "slow_factor": 2, "target_accuracy": target, "max_s": max_s, "rows": rows,
            "note": note}
