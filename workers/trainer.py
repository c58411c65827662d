"""The built-in trainer behind `paramserver worker`: a `workers.tasks` model (the digits MLP
or the CTR model) against a parameter server."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from paramserver.errors import ParamServerError
from paramserver.security.credentials import ClientSecurity
from paramserver.types import CodecSpec, Mode, Role
from workers.data import epoch_batches, epoch_seed, shard_indices, steps_per_epoch
from workers.embeddings import AttachedTables, excluded, find_tables, open_tables, plan_for
from workers.parameter_client import ParameterClient
from workers.table_client import TableClient
from workers.tasks import TABLE_INIT_SCALE, make_task, train_examples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    servers: str  # "host:port[,host:port...]" in shard order
    worker_id: str
    rank: int = 0
    num_workers: int = 1
    epochs: int = 10
    batch_size: int = 32
    data: str = "split"
    seed: int = 0
    hidden: int = 128
    codecs: tuple[CodecSpec, ...] = field(default_factory=lambda: (CodecSpec("none"),))
    pull_codecs: tuple[CodecSpec, ...] = field(default_factory=lambda: (CodecSpec("none"),))
    error_feedback: bool = True
    ef_momentum: float = 0.0  # momentum correction for biased codecs (server momentum 0)
    timeout_s: float = 60.0
    retry_s: float = 60.0  # how long to retry an unreachable server before failing
    security: ClientSecurity | None = None  # TLS and credential (None: from the environment)
    model: str = "digits"  # a name in workers.tasks.MODELS
    ctr_spec: str = "tiny"  # --model ctr: the data set, a name in workers.ctr_data.SPECS
    table_optimizer: str = "adam:lr=0.03"  # row-sparse tables' (issue #16): SparseAdam's rule
    shm: bool = False  # offer the shared-memory data plane (issue #14)


@dataclass(frozen=True)
class TrainReport:
    worker_id: str
    accuracy: float  # the test metric named by `metric`
    steps: int
    version: int
    wall_s: float
    bytes_pushed: int
    bytes_pulled: int
    mode: str
    codec: str
    pull_codec: str
    compression_ratio: float  # uncompressed gradient bytes / gradient bytes sent
    bytes_pushed_gradients: int
    final_loss: float
    rejoins: int = 0  # shards re-entered after eviction or a shard restart
    aborted_pushes: int = 0  # pushes dropped (step closed without them, or too stale)
    duplicate_pushes: int = 0  # retried pushes the server had already applied
    retries: int = 0  # calls retried after UNAVAILABLE / DEADLINE_EXCEEDED
    metric: str = "accuracy"  # what `accuracy` holds: "accuracy" (digits) or "auc" (ctr)


# Called after each epoch with (epoch, mean training loss, test metric).
EpochCallback = Callable[[int, float, float], None]
# Called with the step's index (from 0) after its backward pass, before its push: a test
# makes a straggler by sleeping here (tests/straggler_worker.py).
StepHook = Callable[[int], None]


def train(config: TrainConfig, on_epoch: EpochCallback | None = None,
          before_push: StepHook | None = None) -> TrainReport:
    """Train `config.model` with the server holding the parameters and the optimizer."""
    torch.set_num_threads(1)  # workers share the cores with the server and each other
    task = make_task(config.model, config.hidden, config.seed, config.ctr_spec)
    model = task.model
    started = time.perf_counter()
    with ParameterClient(config.servers, config.worker_id, push_codecs=config.codecs,
                         pull_codecs=config.pull_codecs, timeout_s=config.timeout_s,
                         error_feedback=config.error_feedback,
                         ef_momentum=config.ef_momentum, retry_s=config.retry_s,
                         security=config.security, shm=config.shm) as client, \
            _attached(client, model, config.table_optimizer, config.seed) as tables:
        n = task.n_train
        mine = shard_indices(n, config.rank, config.num_workers, config.data)
        steps = steps_per_epoch(n, config.num_workers, config.data, config.batch_size)
        schedule = _Schedule(config, mine, steps)
        loop = _LoopState()
        for step in _job_steps(client, schedule, config.epochs * steps):
            batch = schedule.batch(step)
            model.zero_grad(set_to_none=True)
            out = task.loss(batch)
            out.backward()
            if before_push is not None:
                before_push(loop.steps_done)
            if tables is not None:  # the row gradients first: one push sequence per worker
                tables.push()
            client.step(num_samples=len(batch))
            loop.record(float(out))
            if schedule.ends_epoch(step):
                loss = loop.close_epoch()
                acc = task.evaluate()
                epoch = step // steps + 1
                log.info("%s epoch %d loss %.4f test %s %.4f (version %d)",
                         config.worker_id, epoch, loss, task.metric, acc, client.version)
                if on_epoch is not None:
                    on_epoch(epoch, loss, acc)
        steps_done, loss = loop.steps_done, loop.last_loss
        if client.session.mode is Mode.SYNC and client.version >= schedule.steps * config.epochs:
            # The job reached its last step: a backup worker whose every push came after its
            # step closed (--sync-quorum) contributed nothing, but nothing was lost either.
            warn_if_none_applied(config.worker_id, steps_done * len(client.connections),
                                 client.aborted_pushes)
        else:
            require_some_applied(config.worker_id, steps_done * len(client.connections),
                                 client.aborted_pushes)
        if client.session.mode in (Mode.ASYNC, Mode.SSP):
            client.pull(0)  # the freshest parameters, including other workers' updates
        return TrainReport(
            worker_id=config.worker_id,
            accuracy=task.evaluate(),
            steps=steps_done,
            version=client.version,
            wall_s=time.perf_counter() - started,
            bytes_pushed=client.bytes_pushed,
            bytes_pulled=client.bytes_pulled,
            mode=client.session.mode.value,
            codec=str(client.session.push_codec),
            pull_codec=str(client.session.pull_codec),
            compression_ratio=client.compression_ratio,
            bytes_pushed_gradients=client.gradient_bytes_pushed,
            final_loss=loss,
            rejoins=client.rejoins,
            aborted_pushes=client.aborted_pushes,
            duplicate_pushes=sum(c.duplicates for c in client.connections),
            retries=sum(c.retries for c in client.connections),
            metric=task.metric,
        )


@contextlib.contextmanager
def _attached(client: ParameterClient, model: nn.Module, table_optimizer: str,
              seed: int) -> Iterator[AttachedTables | None]:
    """Attach `model` to the job: its sparse embedding modules as row-sparse tables (issue
    #16, declared with `table_optimizer`; None when it has none), the rest dense."""
    modules = find_tables(model, None)
    client.attach(model, exclude=excluded(modules))

    def pull_codecs(shard: int) -> CodecSpec:
        return client.sessions[shard].pull_codec

    if not modules:
        tables = None
    elif client.role is Role.OBSERVER:  # reads rows; may not declare (the workers did)
        plan = plan_for(modules, len(client.connections), table_optimizer, seed,
                        TABLE_INIT_SCALE)
        tables = AttachedTables(modules, TableClient(client.connections, plan, sync=False,
                                                     pull_codecs=pull_codecs))
    else:  # rows go under the sessions' codecs, as with workers.attach
        tables = open_tables(modules, client.connections, client.session.mode is Mode.SYNC,
                             table_optimizer, seed, TABLE_INIT_SCALE, None,
                             client.push_codecs, pull_codecs)
    try:
        yield tables
    finally:
        if tables is not None:
            tables.close()


class _Schedule:
    """The batch of each step of the job: epoch e = step // steps draws its order from a
    seed of (seed, e, rank), so a step redone after a server restart trains on the same
    batch as the first time."""

    def __init__(self, config: TrainConfig, mine: np.ndarray, steps: int) -> None:
        self._config, self._mine, self.steps = config, mine, steps
        self._epoch = -1
        self._batches: list[np.ndarray] = []

    def batch(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps)
        if epoch != self._epoch:
            seed = epoch_seed(self._config.seed, epoch, self._config.rank)
            self._batches = epoch_batches(self._mine, self.steps, self._config.batch_size,
                                          seed)
            self._epoch = epoch
        return self._batches[index]

    def ends_epoch(self, step: int) -> bool:
        """Whether the step just taken was its epoch's last one."""
        return (step + 1) % self.steps == 0


class _LoopState:
    """Steps taken and the losses of the epoch under way."""

    def __init__(self) -> None:
        self.steps_done = 0
        self.losses: list[float] = []
        self.last_loss = float("nan")

    def record(self, loss: float) -> None:
        self.steps_done += 1
        self.losses.append(loss)

    def close_epoch(self) -> float:
        self.last_loss = sum(self.losses) / max(len(self.losses), 1)
        self.losses = []
        return self.last_loss


def _job_steps(client: ParameterClient, schedule: _Schedule, total: int) -> Iterator[int]:
    """The steps this worker takes. Sync: the job's step numbering is the servers' version,
    so every worker trains until the job reached `total` and all end on the same version,
    even when a server restored from an older checkpoint made them redo steps (issue #19).
    Async and SSP: this worker's own count of `total` steps, as every worker pushes its own."""
    if client.session.mode is Mode.SYNC:
        while client.version < total:
            yield client.version
    else:
        yield from range(total)


def warn_if_none_applied(worker_id: str, pushes: int, aborted: int) -> None:
    if pushes and aborted >= pushes:
        log.warning("%s: all %d pushes were ABORTED (each step closed before it arrived): "
                    "this worker's gradients were not applied", worker_id, aborted)


def require_some_applied(worker_id: str, pushes: int, aborted: int) -> None:
    """Fail loudly when every one of `pushes` (> 0) was ABORTED: nothing this worker
    computed was applied, which an exit status of 0 would hide (issue #13: a poisoned
    ledger made a worker "finish" with 118 of 118 pushes dropped)."""
    if pushes and aborted >= pushes:
        raise ParamServerError(f"{worker_id}: all {aborted} pushes were ABORTED (replayed or "
                               "too late); none of this worker's gradients was applied")


def evaluate_server_model(servers: str, hidden: int = 128, timeout_s: float = 30.0,
                          security: ClientSecurity | None = None,
                          name: str = "evaluator", model: str = "digits",
                          ctr_spec: str = "tiny", table_optimizer: str = "adam:lr=0.03",
                          seed: int = 0) -> tuple[float, int]:
    """(test metric, version) of the servers' current parameters for `model` (accuracy for
    digits, AUC for ctr), read by an observer named `name` (under authentication: the
    credential's own name, or any for an admin). Row-sparse tables are read with the plan
    the workers declared (`table_optimizer`, `seed`)."""
    task = make_task(model, hidden, ctr_spec=ctr_spec)
    with ParameterClient(servers, name, role=Role.OBSERVER, timeout_s=timeout_s,
                         security=security) as client, \
            _attached(client, task.model, table_optimizer, seed):
        return task.evaluate(), client.version


def total_steps(config: TrainConfig) -> int:
    n = train_examples(config.model, config.ctr_spec)
    return config.epochs * steps_per_epoch(n, config.num_workers, config.data, config.batch_size)

