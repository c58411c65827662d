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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.types import CodecSpec, Mode, PushResult
from workers.buckets import DEFAULT_BUCKET_BYTES, BucketTracker
from workers.connection import LinkShaper
from workers.environment import WorkerIdentity
from workers.parameter_client import ParameterClient

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)

Codecs = str | Sequence[CodecSpec]


class AttachedModel:
    """A model whose `step()` goes through the parameter servers. Close it (or use `with`)."""

    def __init__(self, model: nn.Module, client: ParameterClient, identity: WorkerIdentity,
                 overlap: bool, bucket_bytes: int) -> None:
        self.model = model
        self.client = client
        self.identity = identity
        self.overlap = overlap  # may be switched between steps
        self._params = dict(model.named_parameters())
        trainable = [(n, p.numel() * p.element_size()) for n, p in self._params.items()
                     if p.requires_grad]
        self._tracker = BucketTracker(trainable, bucket_bytes)
        self._pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ps-push")
        self._in_flight: list[Future[list[PushResult]]] = []
        self._in_flight_lock = threading.Lock()
        self._pushing = True  # False inside no_sync()
        self._hooks = [self._params[name].register_post_accumulate_grad_hook(
            self._hook_for(name)) for name, _ in trainable]
        self.steps = 0
        self.metrics: WorkerMetrics | None = None  # attach(metrics_port=) sets it
        self.parts_pushed = 0  # pushes started during backward (overlap)

    # ---- what the training loop calls ----------------------------------------------------

    def step(self, num_samples: int = 1) -> list[PushResult]:
        """Finish this step: wait for the bucket pushes still in flight, push the gradients
        not sent yet, close the step on every shard, pull the next version into the model.

        Raises the servers' error (a `paramserver.errors.ParameterServerError`) if a push or
        the pull failed; every call has a deadline, so a dead server never hangs the loop.
        """
        started = time.perf_counter()
        try:
            self._wait_for_parts()
            repeated = self._tracker.repeated
            if repeated:
                raise RuntimeError(
                    f"parameters {sorted(set(repeated))[:5]} got a second gradient after their "
                    "bucket was pushed: call step() after every backward(), or accumulate "
                    "gradients inside `with attached.no_sync():`")
            sent = self._tracker.handed_out()
            rest = [n for n, p in self._params.items() if p.grad is not None and n not in sent]
            if not sent and not rest:
                raise InvalidArgument("no parameter has a gradient: call backward() first")
            results = self.client.step(num_samples=num_samples, names=rest)
        finally:
            self._tracker.reset()
        self.steps += 1
        if self.metrics is not None:
            self.metrics.observe_step(time.perf_counter() - started)
        return results

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

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        with contextlib.suppress(Exception):
            self._wait_for_parts()
        self._pusher.shutdown(wait=True)
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


class ServerOptimizer(torch.optim.Optimizer):
    """A drop-in for `torch.optim.Optimizer` whose `step()` pushes the gradients and pulls the
    servers' parameters; the update rule is the servers' optimizer (`paramserver serve
    --optimizer ...`). Wrapping an existing optimizer keeps its param groups (so LR
    schedulers and `zero_grad` work as before), but its own update rule is not used.
    """

    def __init__(self, attached: AttachedModel,
                 wrapped: torch.optim.Optimizer | None = None) -> None:
        self.attached = attached
        self.wrapped = wrapped
        if wrapped is not None:
            super().__init__(wrapped.param_groups, dict(wrapped.defaults))
            self.param_groups = wrapped.param_groups  # shared: schedulers see one list
        else:
            params = [p for p in attached.model.parameters() if p.requires_grad]
            super().__init__(params, {})
        self.num_samples = 1  # weight of the next step under --aggregate weighted

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.attached.step(num_samples=self.num_samples)
        return loss


def attach(model: nn.Module, servers: str | Sequence[str], *, codecs: Codecs = "none",
           pull_codecs: Codecs = "none", mode: str | Mode | None = None,
           worker_id: str | None = None, overlap: bool = True,
           bucket_mb: float = DEFAULT_BUCKET_BYTES / 2**20, error_feedback: bool = True,
           ef_momentum: float = 0.0, timeout_s: float = 60.0, retry_s: float = 60.0,
           shaper_factory: Callable[[str], LinkShaper] | None = None,
           metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
           ) -> AttachedModel:
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
    `metrics_port`: serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: a
    free port, see `attached.metrics.port`; None: off).
    """
    identity = WorkerIdentity.from_env()
    if worker_id is not None:
        identity = WorkerIdentity(worker_id, identity.rank, identity.world_size,
                                  identity.local_rank)
    client = ParameterClient(servers, identity.worker_id, push_codecs=_specs(codecs),
                             pull_codecs=_specs(pull_codecs), timeout_s=timeout_s,
                             error_feedback=error_feedback, ef_momentum=ef_momentum,
                             retry_s=retry_s, shaper_factory=shaper_factory)
    try:
        expected = Mode(mode) if isinstance(mode, str) else mode
        if expected is not None and client.session.mode is not expected:
            raise FailedPrecondition(f"expected a {expected.value} job, but the servers run "
                                     f"in {client.session.mode.value} mode")
        client.attach(model)
        attached = AttachedModel(model, client, identity, overlap, int(bucket_mb * 2**20))
        if metrics_port is not None:
            from workers.metrics import WorkerMetrics  # prometheus_client only if asked

            attached.metrics = WorkerMetrics(client, metrics_port, metrics_host)
        return attached
    except BaseException:
        client.close()
        raise


def _specs(codecs: Codecs) -> tuple[CodecSpec, ...]:
    return CodecSpec.parse_list(codecs) if isinstance(codecs, str) else tuple(codecs)
