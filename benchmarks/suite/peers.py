"""The peers, built with their public APIs the way their users would build them.

- `torch.distributed` all-reduce over gloo: every rank holds the model; a step all-reduces
  each gradient tensor (launched together, as DDP launches its buckets), averages, and
  applies SGD with momentum locally. Rendezvous through a file; gloo's pairs on lo.
- A parameter server on `torch.distributed.rpc`, as PyTorch's tutorial "Implementing Batch
  RPC Processing Using Asynchronous Executions" builds its batch-updating parameter server:
  the server's `update_and_fetch_model` is an `@rpc.functions.async_execution` static
  method that adds each trainer's gradients under a lock, steps the optimizer when all have
  arrived and completes one future that answers every trainer with the new model. The
  tutorial's master (here the server process) creates the server's RRef and drives the
  trainers with `rpc_async`. One difference: the reply carries the parameter tensors rather
  than the pickled `nn.Module`, the same bytes our pull moves.

Both use TCP only (TensorPipe `uv` transport, `basic` channel; gloo has only TCP): between
machines nothing else exists, and on one host TensorPipe's shared-memory channels would both
flatter it and bypass the link caps, which shape TCP on lo.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import rpc

from benchmarks.blob import Blob
from benchmarks.measure import StageClock, StageCpu, cpu_split, stat
from benchmarks.suite import netcap
from benchmarks.suite.ours import LR, MOMENTUM, TIMEOUT_S
from benchmarks.suite.pool import WorkerPool
from paramserver.cli.local_cluster import run_in_processes


def _loopback_only() -> None:
    torch.set_num_threads(1)  # as our workers: the processes share 2 cores
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["TP_SOCKET_IFNAME"] = "lo"


# ---- all-reduce over gloo ------------------------------------------------------------------

def allreduce_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   world: int) -> None:
    """One data-parallel step: all-reduce every gradient (async, all in flight), average,
    apply. The all-reduce peer of every comparison, on one host or across hosts."""
    works = [dist.all_reduce(p.grad, async_op=True) for p in params]  # type: ignore[arg-type]
    for work, p in zip(works, params):
        work.wait()
        p.grad.div_(world)  # type: ignore[union-attr]
    optimizer.step()


def allreduce_rank(rank: int, world: int, init_file: str, model_mb: float,
                   caps: tuple[str, ...], warmup: int, reps: int) -> list[dict[str, Any]]:
    """One rank: warm-up and timed steps per cap; rank 0 sets the caps between them."""
    _loopback_only()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = Blob(model_mb)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

        def step() -> None:
            allreduce_step(params, optimizer, world)

        rows = []
        for cap in caps or (None,):
            dist.barrier()
            if cap is not None and rank == 0:
                netcap.apply(cap)
            dist.barrier()
            for _ in range(warmup):
                step()
            dist.barrier()
            clock = StageClock()
            clock.start()
            steps = []
            for _ in range(reps):
                started = time.perf_counter()
                step()
                steps.append(time.perf_counter() - started)
            dist.barrier()  # every rank's last all-reduce is done: the stage is whole
            rows.append({"cap": cap or "unlimited", "steps": steps,
                         "stage": asdict(clock.stop())})
        return rows
    finally:
        dist.destroy_process_group()


def allreduce(pool: WorkerPool, run_dir: Path, model_mb: float, workers: int,
              caps: tuple[str, ...] = (), warmup: int = 2, reps: int = 5) -> list[dict[str, Any]]:
    init_file = run_dir / f"gloo-{time.monotonic_ns()}"
    results = pool.run(allreduce_rank, [(rank, workers, str(init_file), model_mb, caps, warmup,
                                         reps) for rank in range(workers)], 3 * TIMEOUT_S)
    return _rows("gloo-allreduce", model_mb, workers, results, reps)


def _rows(system: str, model_mb: float, workers: int, results: list[list[dict[str, Any]]],
          reps: int, servers: list[StageCpu] | None = None) -> list[dict[str, Any]]:
    """Per cap: the slowest process's time step by step, and where the CPU went."""
    rows = []
    for index, first in enumerate(results[0]):
        per_process = [r[index] for r in results]
        steps = [max(times) for times in zip(*(p["steps"] for p in per_process))]
        stages = [StageCpu(**p["stage"]) for p in per_process]
        if servers is not None:  # the server's own CPU, charged as the watched process
            lead = stages[0]
            stages[0] = StageCpu(lead.wall_s, lead.own_s, servers[index].own_s,
                                 servers[index].machine_s, servers[index].wire_bytes)
        rows.append({"system": system, "mode": "sync", "model_mb": model_mb,
                     "workers": workers, "shards": 1, "codec": "none", "cap": first["cap"],
                     "step_s": stat(steps), "wire_bytes": stages[0].wire_bytes // reps,
                     **cpu_split(stages, reps)})
    return rows


# ---- the torch.distributed.rpc parameter server (PyTorch tutorial) ------------------------

class BatchUpdateParameterServer:
    """The tutorial's server: gradients summed under a lock, one optimizer step per batch."""

    def __init__(self, model_mb: float, batch_update_size: int) -> None:
        self.model = Blob(model_mb)
        self.lock = threading.Lock()
        self.future_model: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future()
        self.batch_update_size = batch_update_size
        self.curr_update_size = 0
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)

    def get_model(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.model.parameters()]

    @staticmethod
    @rpc.functions.async_execution
    def update_and_fetch_model(ps_rref: rpc.RRef, grads: list[torch.Tensor]
                               ) -> torch.futures.Future[list[torch.Tensor]]:
        self = ps_rref.local_value()
        with self.lock:
            self.curr_update_size += 1
            for p, g in zip(self.model.parameters(), grads):
                p.grad += g
            fut = self.future_model
            if self.curr_update_size >= self.batch_update_size:
                for p in self.model.parameters():
                    p.grad /= self.batch_update_size
                self.curr_update_size = 0
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=False)
                fut.set_result(self.get_model())
                self.future_model = torch.futures.Future()
        return fut


def run_trainer(ps_rref: rpc.RRef, model_mb: float, warmup: int, reps: int,
                probe: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The tutorial's trainer loop: fetch the model, then send gradients and get the next
    model back, step after step (the gradients are fixed, as in our workers). `probe` (a
    module-level function, called in the trainer's process) is read when the timed steps
    start and when they end: the result's "probe" is the pair (benchmarks.hosts reads the
    host's link counters with it)."""
    grads = [p.grad for p in Blob(model_mb).parameters()]
    params = ps_rref.rpc_sync().get_model()
    steps = []
    clock = StageClock()
    marks = []
    for index in range(warmup + reps):
        if index == warmup:
            clock.start()
            marks.append(probe() if probe is not None else None)
        started = time.perf_counter()
        params = rpc.rpc_sync(ps_rref.owner(), BatchUpdateParameterServer.update_and_fetch_model,
                              args=(ps_rref, grads), timeout=TIMEOUT_S)
        if index >= warmup:
            steps.append(time.perf_counter() - started)
    del params
    marks.append(probe() if probe is not None else None)
    return {"steps": steps, "stage": asdict(clock.stop()), "probe": marks}


def rpc_options(init_method: str) -> rpc.TensorPipeRpcBackendOptions:
    """TCP only: TensorPipe's `uv` transport and `basic` channel (see the module doc)."""
    return rpc.TensorPipeRpcBackendOptions(init_method=init_method, num_worker_threads=16,
                                           rpc_timeout=TIMEOUT_S, _transports=["uv"],
                                           _channels=["basic"])


def rpc_name(rank: int) -> str:
    return "ps" if rank == 0 else f"trainer{rank}"


def drive_trainers(ps_rref: rpc.RRef, world: int, model_mb: float, warmup: int, reps: int,
                   probe: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """The master's part: every trainer runs its loop at once; their results in rank order."""
    futures = [rpc.rpc_async(rpc_name(r), run_trainer,
                             args=(ps_rref, model_mb, warmup, reps, probe), timeout=TIMEOUT_S)
               for r in range(1, world)]
    return [f.wait() for f in futures]


def rpc_process(rank: int, world: int, init_file: str, model_mb: float, caps: tuple[str, ...],
                warmup: int, reps: int) -> Any:
    """Rank 0 is the parameter server and the tutorial's master; the others are trainers."""
    _loopback_only()
    rpc.init_rpc(rpc_name(rank), rank=rank, world_size=world,
                 rpc_backend_options=rpc_options(f"file://{init_file}"))
    try:
        if rank != 0:
            return None  # trainers serve the master's calls until shutdown
        ps_rref = rpc.RRef(BatchUpdateParameterServer(model_mb, world - 1))
        runs = []
        for cap in caps or (None,):
            if cap is not None:
                netcap.apply(cap)
            clock = StageClock()
            clock.start()
            results = drive_trainers(ps_rref, world, model_mb, warmup, reps)
            server = clock.stop()
            runs.append({"cap": cap or "unlimited", "trainers": results,
                         "server": asdict(server)})
        return runs
    finally:
        rpc.shutdown()


def rpc_parameter_server(run_dir: Path, model_mb: float, workers: int,
                         caps: tuple[str, ...] = (), warmup: int = 2,
                         reps: int = 5) -> list[dict[str, Any]]:
    init_file = run_dir / f"rpc-{time.monotonic_ns()}"
    results = run_in_processes(rpc_process, [
        (rank, workers + 1, str(init_file), model_mb, caps, warmup, reps)
        for rank in range(workers + 1)], timeout_s=3 * TIMEOUT_S)
    runs = results[0]
    per_trainer = [[{"cap": run["cap"], **run["trainers"][t]} for run in runs]
                   for t in range(workers)]
    # The server's stage spans the trainers' warm-up too: scale its CPU to the timed steps.
    servers = []
    for run in runs:
        whole = StageCpu(**run["server"])
        share = reps / (warmup + reps)
        servers.append(StageCpu(whole.wall_s * share, whole.own_s * share,
                                whole.own_s * share, whole.machine_s * share,
                                int(whole.wire_bytes * share)))
    return _rows("rpc-ps", model_mb, workers, per_trainer, reps, servers)
