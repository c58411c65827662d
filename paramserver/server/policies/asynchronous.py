"""Asynchronous updates: every push is applied as it arrives (Hogwild-style PS).

`max_staleness` bounds how old the parameters behind a gradient may be: a push computed on
a version more than that many updates behind is ABORTED, with its staleness in the message.
The learning rate of each push is scaled by the `AsyncLearningRate` rule: by default
1 / max(W, staleness + 1) for a job of W workers (`--workers`, or more if more are live),
so W workers' pushes move the model as far as one sync step of their mean would, and a
gradient staler than the usual round-robin lands weaker still.
"""

from __future__ import annotations

from paramserver.codecs.base import to_dense
from paramserver.errors import Aborted, FailedPrecondition
from paramserver.server.config import AsyncLearningRate
from paramserver.server.policies.base import PolicyContext, PolicyDefaults, ReceivedPush
from paramserver.server.policies.step_rules import StepRules
from paramserver.server.store import ParameterStore
from paramserver.types import PushResult


def check_async_step(store: ParameterStore, step: int, max_staleness: int | None) -> int:
    """The staleness of a gradient computed on version `step`; raise if it is refused."""
    current = store.version
    if step > current:
        raise FailedPrecondition(
            f"push computed on version {step}, but the server is only at version {current}")
    if step < 0:
        raise FailedPrecondition(f"negative step {step}")
    staleness = current - step
    if max_staleness is not None and staleness > max_staleness:
        raise Aborted(f"gradient staleness {staleness} exceeds --max-staleness "
                      f"{max_staleness} (computed on version {step}, server at "
                      f"{current}); pull and recompute")
    return staleness


class AsyncPolicy(PolicyDefaults):
    """Applies each gradient at once; staleness = server version - version it was computed on."""

    def __init__(self, context: PolicyContext, max_staleness: int | None = None,
                 rate: AsyncLearningRate = AsyncLearningRate.CONSTANT) -> None:
        self._store = context.store
        self._members = context.members
        self._job_size = context.config.expected_workers
        self._max_staleness = max_staleness
        self._rate = rate
        self._base_lr = context.config.optimizer.lr

    def check_step(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        check_async_step(self._store, step, self._max_staleness)

    def submit(self, push: ReceivedPush) -> PushResult:
        rules = StepRules()
        rules.add(push.options)
        if rules.found_inf:  # GradScaler found inf/NaN: this gradient is skipped
            return PushResult(version=self._store.version, applied=False)
        grads = {}
        for name, update in push.updates.items():
            spec = self._store.spec(name)
            grads[name] = to_dense(update, spec.numel, spec.dtype)
        rules.clip(grads)
        workers = len(self._members.live_workers())
        with self._store.lock:
            staleness = check_async_step(self._store, push.step, self._max_staleness)
            scale = self._lr_scale(workers, staleness) * rules.lr_scale(self._base_lr)
            version = (self._store.apply({}, scale, plain=grads) if push.momentum_applied
                       else self._store.apply(grads, scale))
        return PushResult(version=version, applied=True, staleness=staleness)

    def _lr_scale(self, live: int, staleness: int) -> float:
        if self._rate is AsyncLearningRate.WORKERS:
            # The job size, not only who is live now: a worker that trains on alone at the
            # end would otherwise take the full rate exactly where the final model is made.
            return 1.0 / max(self._job_size, live, staleness + 1)
        if self._rate is AsyncLearningRate.STALENESS:
            return 1.0 / max(1, staleness)
        return 1.0
