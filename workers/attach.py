"""Attach an existing PyTorch model to parameter servers: the few lines a training loop adds.

    ps = workers.attach(model, "127.0.0.1:50051")
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()   # pushes start here, bucket by bucket
        ps.step(num_samples=len(x))       # waits for the pushes, pulls the new parameters

With `overlap=True` (the default) every parameter gets a post-accumulate-grad hook; once all
gradients of a bucket (a few MiB, filled from the last layer backwards as in DDP) are ready,
the bucket is pushed on a background thread while backward continues. `step()` pushes what
is left, closes the step on every shard and pulls the next version in place.

Safe by construction (issue #18): the hook takes a fingerprint (sum and 2-norm, exact bits)
of each gradient it hands to a push, and `step()` compares it with `.grad` once every part
is done: a gradient changed between backward and step (`torch.nn.utils.clip_grad_norm_`,
`GradScaler.unscale_`, an in-place edit) means the servers got something else than the loop
meant (or a mix, had the edit raced the push), so the step fails there, naming the fix
(`ps.clip_grad_norm_`, which clips the averaged gradient on the servers like DDP; GradScaler
through `ps.optimizer`; or `overlap=False`, which pushes `.grad` as it is at `step()`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.security.credentials import ClientSecurity
from paramserver.tables import TableOptimizer
from paramserver.transport import FLOW_CONTROL_WINDOW
from paramserver.types import CodecSpec, Mode, PushResult, StepOptions
from workers.buckets import DEFAULT_BUCKET_BYTES, BucketTracker
from workers.checkpoints import client_state, load_client_state
from workers.connection import LinkShaper
from workers.embeddings import AttachedTables, excluded, find_tables, open_tables
from workers.environment import WorkerIdentity
from workers.environment import claim_wait_s as default_claim_wait_s
from workers.job_end import wait_for_world
from workers.parameter_client import ParameterClient
from workers.payloads import buffers_pushed
from workers.server_optimizer import ServerOptimizer
from workers.step_guards import drop_nonfinite_feedback, fingerprint, same_bits
from workers.termination import leave_on_sigterm

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics


Codecs = str | Sequence[CodecSpec]


class AttachedModel:
    """A model whose `step()` goes through the parameter servers. Close it (or use `with`)."""

    def __init__(self, model: nn.Module, client: ParameterClient, identity: WorkerIdentity,
                 overlap: bool, bucket_bytes: int, exclude: Collection[str] = ()) -> None:
        self.model = model
        self.client = client
        self.identity = identity
        self.overlap = overlap  # may be switched between steps
        self._params = {n: p for n, p in model.named_parameters() if n not in exclude}
        self.tables: AttachedTables | None = None  # row-sparse tables (issue #16)
        trainable = [(n, p.numel() * p.element_size()) for n, p in self._params.items()
                     if p.requires_grad]
        self._tracker = BucketTracker(trainable, bucket_bytes)
        self._pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ps-push")
        self._in_flight: list[Future[list[PushResult]]] = []
        self._in_flight_lock = threading.Lock()
        self._pushing = True  # False inside no_sync()
        self._pushed: dict[str, torch.Tensor | None] = {}  # fingerprints of pushed parts
        self._max_grad_norm: float | None = None  # set by clip_grad_norm_ for this step
        self._server_optimizer: str | None = None
        self._hooks = [self._params[name].register_post_accumulate_grad_hook(
            self._hook_for(name)) for name, _ in trainable]
        self.steps = 0
        self.metrics: WorkerMetrics | None = None  # attach(metrics_port=) sets it
        self.parts_pushed = 0  # pushes started during backward (overlap)

    # ---- what the training loop calls ----------------------------------------------------

    def step(self, num_samples: int = 1,
             options: StepOptions | None = None) -> list[PushResult]:
        """Finish this step: wait for the bucket pushes still in flight, push the gradients
        not sent yet, close the step on every shard, pull the next version into the model.

        `options`: the step's rate, loss scale and inf/NaN flag (`ServerOptimizer` fills
        them in); a bound set by `clip_grad_norm_` is added. Raises the servers' error (a
        `paramserver.errors.ParamServerError`) if a push or the pull failed; every call has
        a deadline, so a dead server never hangs the loop.
        """
        options = dataclasses.replace(options or StepOptions(),
                                      max_grad_norm=self._max_grad_norm)
        started = time.perf_counter()
        try:
            self._wait_for_parts()
            repeated = self._tracker.repeated
            if repeated:
                raise RuntimeError(
                    f"parameters {sorted(set(repeated))[:5]} got a second gradient after their "
                    "bucket was pushed: call step() after every backward(), or accumulate "
                    "gradients inside `with attached.no_sync():`")
            if not options.found_inf:  # inf/NaN steps are skipped whatever was pushed
                self._check_pushed_unchanged()
            if self.tables is not None:  # before the dense push (one sequence per worker)
                self.tables.push(drop=options.found_inf)
            sent = self._tracker.handed_out()
            rest = [n for n, p in self._params.items() if p.grad is not None and n not in sent]
            if not sent and not rest:
                raise InvalidArgument("no parameter has a gradient: call backward() first")
            results = self.client.step(num_samples=num_samples, names=rest, options=options)
            if options.found_inf:
                drop_nonfinite_feedback(self.client)
        finally:
            self._tracker.reset()
            self._pushed = {}
            self._max_grad_norm = None
        self.steps += 1
        if self.metrics is not None:
            self.metrics.observe_step(time.perf_counter() - started)
        return results

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip this step's gradient like `torch.nn.utils.clip_grad_norm_` under DDP: the
        servers clip the *averaged* gradient of all workers to total 2-norm `max_norm` before
        applying it (same formula: times min(1, max_norm / (norm + 1e-6))).

        Call it between backward() and step(), in place of torch's; `.grad` is left as it
        is. Returns the 2-norm of this worker's own gradient as it is (loss-scaled under
        GradScaler; the averaged gradient exists only on the servers). Needs one server: the norm spans every parameter, and each shard
        only sees its own.
        """
        if norm_type != 2.0:
            raise InvalidArgument(f"only the 2-norm is supported, got norm_type={norm_type}")
        if not max_norm > 0:
            raise InvalidArgument(f"max_norm must be positive, got {max_norm}")
        plan = self.client.plan
        if plan is not None and plan.num_shards > 1:
            raise FailedPrecondition(
                f"ps.clip_grad_norm_ needs the whole model on one server ({plan.num_shards} "
                "shards hold it): the total norm spans all shards")
        self._max_grad_norm = float(max_norm)
        grads = [p.grad.detach() for p in self._params.values() if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        return torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g, 2.0).to(grads[0].device) for g in grads]), 2.0)

    def prefetch(self, table_inputs: Mapping[str, torch.Tensor]) -> None:
        """Start pulling the rows the next batch needs ({table module name: its input
        ids}), on a background thread; the next forward on the same ids uses them. Call it
        any time after backward: it waits until this step's rows were pushed."""
        if self.tables is None:
            raise FailedPrecondition("the model has no row-sparse tables")
        self.tables.prefetch(table_inputs)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the job as this worker sees it: the servers' parameters,
        optimizer state and version, and this worker's codec residuals (see
        `workers.checkpoints`); `torch.save` it like any state_dict. Call between steps."""
        return client_state(self.client)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` on fresh servers, right after attach, before the first
        step; every worker may call it (the servers install it once)."""
        load_client_state(self.client, state)
        if self.tables is not None:  # the servers' tables are at the loaded versions now
            self.tables.client.refresh_versions()

    @property
    def server_optimizer(self) -> str:
        """The servers' update rule as `status` describes it (asked once)."""
        if self._server_optimizer is None:
            self._server_optimizer = self.client.connections[0].status().optimizer
        return self._server_optimizer

    def _check_pushed_unchanged(self) -> None:
        """Every pushed gradient must still match its fingerprint (see the module doc)."""
        changed = [name for name, mark in self._pushed.items()
                   if not same_bits(mark, fingerprint(self._params[name].grad))]
        if changed:
            raise RuntimeError(
                f"the gradients of {sorted(changed)[:3]} changed between backward() and "
                "step(), after they were pushed (overlap pushes them during backward): use "
                "ps.clip_grad_norm_(max_norm) instead of torch.nn.utils.clip_grad_norm_ "
                "(it clips the averaged gradient, like DDP), let scaler.step(optimizer) "
                "unscale through the ps.optimizer(...) wrapper instead of calling "
                "scaler.unscale_, or attach with overlap=False to push .grad as it is at "
                "step() (each worker then clips its own gradient, unlike DDP)")

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally: backward passes inside push nothing (like DDP)."""
        self._pushing = False
        try:
            yield
        finally:
            self._pushing = True

    def optimizer(self, wrapped: torch.optim.Optimizer | None = None) -> ServerOptimizer:
        """A torch optimizer whose `step()` is this model's step (see `ServerOptimizer`)."""
        return ServerOptimizer(self, wrapped)

    @property
    def version(self) -> int:
        """The server version of the parameters now in the model."""
        return self.client.version

    def job_steps(self, total: int) -> Iterator[int]:
        """The steps of a job of `total` steps still to take, in the job's numbering. Sync:
        the servers' version is the job's step, so a rank that (re)joins mid-job, e.g.
        restarted by torchrun, takes up where the job is, and every rank ends on version
        `total`, no shard pushed beyond it (`shard_calls.pushed_shards`: a rank holding
        two shards a version apart would otherwise end a step further on one of them).
        Under torchrun, a sync job's rank then waits until every rank reached the end
        (`workers.job_end`), so that a restart in progress on another node finds it.
        Async and SSP: this process's own `total` steps."""
        if self.client.session.mode is Mode.SYNC:
            self.client.last_version = total  # no shard is pushed beyond it
            while self.version < total:
                yield self.version
            wait_for_world(total)
        else:
            yield from range(total)

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        with contextlib.suppress(Exception):
            self._wait_for_parts()
        self._pusher.shutdown(wait=True)
        if self.tables is not None:
            self.tables.close()
        self.client.close()
        if self.metrics is not None:
            self.metrics.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- overlap ---------------------------------------------------------------------------

    def _hook_for(self, name: str) -> Any:
        def hook(param: torch.Tensor) -> None:
            if not (self.overlap and self._pushing):
                return
            names = self._tracker.ready(name)
            if not names:
                return
            # A copy taken now, on the autograd thread: user code that edits .grad after
            # backward (clipping, unscaling) cannot race the push; step() compares.
            self._pushed.update((n, fingerprint(self._params[n].grad)) for n in names)
            ready = None
            if param.is_cuda:  # the gradient is final once the work queued so far is done
                ready = torch.cuda.Event()
                ready.record()
            future = self._pusher.submit(self._push_part, names, ready)
            with self._in_flight_lock:
                self._in_flight.append(future)

        return hook

    def _push_part(self, names: list[str], ready: Any) -> list[PushResult]:
        if ready is not None:
            ready.synchronize()
        results = self.client.push(names=names, more_parts=True)
        self.parts_pushed += 1
        return results

    def _wait_for_parts(self) -> None:
        """Wait for every part in flight (all of them, even after one fails), then raise the
        first failure."""
        with self._in_flight_lock:
            futures, self._in_flight = self._in_flight, []
        wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error


def attach(model: nn.Module, servers: str | Sequence[str], *, codecs: Codecs = "none",
           pull_codecs: Codecs = "none", mode: str | Mode | None = None,
           worker_id: str | None = None, overlap: bool = True,
           bucket_mb: float = DEFAULT_BUCKET_BYTES / 2**20, error_feedback: bool = True,
           ef_momentum: float = 0.0, timeout_s: float = 60.0, retry_s: float = 60.0,
           shaper_factory: Callable[[str], LinkShaper] | None = None,
           security: ClientSecurity | None = None, world_size: int | None = None,
           broadcast_buffers: bool | None = None, metrics_port: int | None = None,
           metrics_host: str = "127.0.0.1", claim_wait_s: float | None = None,
           tables: Sequence[str] | None = None,
           table_optimizer: str | TableOptimizer = "sgd:lr=0.01", table_seed: int = 0,
           table_init_scale: float = 0.01, secure_aggregation: bool = False,
           recv_window: int = FLOW_CONTROL_WINDOW,
           shm: bool = False) -> AttachedModel:
    """Register `model` with the servers (or join the model already there), load the
    servers' parameters into it, and return the handle the training loop steps.

    `servers`: 'host:port[,host:port...]' in shard order. `codecs`: push codecs offered in
    order of preference ('topk:ratio=0.01,none'). `mode`: if given, the mode the servers must
    run in ('sync' or 'async'); a mismatch raises FailedPrecondition. `worker_id`: defaults to
    'rank-$RANK' under torchrun, else host-pid. The model should already be on its device
    (`WorkerIdentity.from_env().device()` gives cuda:LOCAL_RANK or the CPU). Each call
    waits at most `timeout_s`; unreachable servers are retried for `retry_s`, then the
    error is raised in the training loop. `shaper_factory(address)` paces each server's
    connection (see `workers.connection.LinkShaper`; benchmarks emulate slow links with it).
    `security`: TLS and this worker's credential (`ClientSecurity.from_files(ca, cert, key)`);
    None reads PARAMSERVER_TLS_CA/_CERT/_KEY or PARAMSERVER_TOKEN from the environment, and
    is plaintext when none is set. Under mutual TLS `worker_id` must be the certificate's.
    `world_size`: the number of workers in the job (default: WORLD_SIZE when torchrun set
    it); a sync server started with another --workers refuses the attach, naming both, and
    so does any server while another live process holds this worker id (a duplicate RANK).
    `claim_wait_s`: how long to wait for such a session's lease to run out first (default:
    `retry_s` under torchrun's elastic agent, whose restarted ranks meet the sessions of
    their dead predecessors, else 0; see `workers.environment.claim_wait_s`).
    Addresses are checked at once; the connect wait lasts at most `retry_s`.
    `broadcast_buffers` (default: rank 0 does): push the model's float buffers (BatchNorm
    statistics) with every step, so the servers hold them and every worker, and anyone who
    attaches later, pulls them, as DDP broadcasts rank 0's buffers before each forward.
    `metrics_port`: serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: a
    free port, see `attached.metrics.port`; None: off).
    `tables` (issue #16): names of Embedding/EmbeddingBag modules kept as row-sparse tables
    on the servers; None: every one declared sparse=True. Their weight (meta is fine) is
    never registered or read: each forward pulls the batch's rows, step() pushes their
    gradient rows (`workers.embeddings`). `table_optimizer` ('adagrad:lr=0.05', 'adam', ...),
    `table_seed` and `table_init_scale` (rows start uniform in +-scale) declare them.
    `secure_aggregation`: this federated client runs secure aggregation (the server must be
    started with --secure-aggregation, and refuses a client that does not offer it).
    `recv_window`: each pull stream's HTTP/2 window in bytes (see `ParameterClient`).
    `shm`: offer servers on this host the shared-memory data plane (`workers/shm_plane.py`;
    used where the server runs with --shm-data-plane, else the gRPC streams).
    """
    identity = WorkerIdentity.from_env()
    if world_size is None and "WORLD_SIZE" in os.environ:
        world_size = identity.world_size
    if worker_id is not None:
        identity = WorkerIdentity(worker_id, identity.rank, identity.world_size,
                                  identity.local_rank)
    client = ParameterClient(servers, identity.worker_id, push_codecs=_specs(codecs),
                             pull_codecs=_specs(pull_codecs), timeout_s=timeout_s,
                             error_feedback=error_feedback, ef_momentum=ef_momentum,
                             retry_s=retry_s, shaper_factory=shaper_factory,
                             security=security, world_size=world_size,
                             claim_wait_s=(default_claim_wait_s(retry_s)
                                           if claim_wait_s is None else claim_wait_s),
                             secure_aggregation=secure_aggregation, recv_window=recv_window,
                             shm=shm)
    leave_on_sigterm(client)  # under torchrun: a stopped rank leaves, no lease to wait out
    try:
        expected = Mode(mode) if isinstance(mode, str) else mode
        if expected is not None and client.session.mode is not expected:
            raise FailedPrecondition(f"expected a {expected.value} job, but the servers run "
                                     f"in {client.session.mode.value} mode")
        table_modules = find_tables(model, tables)
        client.attach(model, exclude=excluded(table_modules))
        client.broadcast_buffers = buffers_pushed(broadcast_buffers, identity.rank,
                                                  client.push_codecs)
        attached = AttachedModel(model, client, identity, overlap, int(bucket_mb * 2**20),
                                 excluded(table_modules))
        attached.tables = open_tables(table_modules, client.connections,
                                      client.session.mode is Mode.SYNC, table_optimizer,
                                      table_seed, table_init_scale, client.rejoin,
                                      client.push_codecs,
                                      lambda shard: client.sessions[shard].pull_codec)
        if metrics_port is not None:
            from workers.metrics import WorkerMetrics  # prometheus_client only if asked

            attached.metrics = WorkerMetrics(client, metrics_port, metrics_host)
        return attached
    except BaseException:
        client.close()
        raise


def _specs(codecs: Codecs) -> tuple[CodecSpec, ...]:
    return CodecSpec.parse_list(codecs) if isinstance(codecs, str) else tuple(codecs)
