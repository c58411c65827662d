"""Weighted sums of pushed updates, and the synchronous step they are collected for.

`Aggregate` is the one aggregation object the aggregating policies share (sync steps,
federated rounds, FedBuff's buffer): add an update with a weight, take the weighted mean,
release. Its sums live in pooled buffers that it owns and gives back on `release()` (or on
leaving its `with` block). A sparse update is added with index_add_, never densified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import torch

from paramserver.codecs import DenseUpdate, Update
from paramserver.codecs.base import add_into
from paramserver.errors import Aborted, FailedPrecondition, StepDiscarded
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.server.policies.base import Clock, ReceivedPush
from paramserver.server.policies.in_order import InOrder
from paramserver.server.policies.step_rules import StepRules
from paramserver.server.store import ParameterStore
from paramserver.types import StepOptions, TensorSpec


class Aggregate:
    """Per tensor: sum of weight * update, and the sum of the weights."""

    def __init__(self, pool: BufferPool, spec_of: Callable[[str], TensorSpec]) -> None:
        self._spec_of = spec_of
        self._buffers = PooledBuffers(pool)
        self._sums: dict[str, torch.Tensor] = {}  # flat, viewing a buffer owned here
        self._weights: dict[str, float] = {}
        # Sums being filled chunk by chunk (`add_chunk`): elements [0, n) are written, the
        # rest not yet (each push adds a tensor's chunks in order, so what any push wrote is
        # a prefix). A sum not listed here is written whole.
        self._filled: dict[str, int] = {}
        self.push_weight = 0.0  # the weights of every push added, whatever it holds

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()

    def add(self, name: str, update: Update, weight: float, source: PooledBuffers) -> None:
        """sum[name] += weight * update. The first dense update of the right dtype becomes
        the sum in place (no copy, no zero-fill): its buffer moves from `source` to here."""
        total = self._sums.get(name)
        if total is not None:
            self._fill(name)
            add_into(total, update, weight)
            self._weights[name] = self._weights.get(name, 0.0) + weight
            return
        spec = self._spec_of(name)
        owner = (source.owner_of(update.values)
                 if isinstance(update, DenseUpdate) and update.values.dtype == spec.dtype
                 else None)
        if owner is not None:
            source.adopt(owner, into=self._buffers)
            total = update.values
            if weight != 1.0:
                total.mul_(weight)
        else:
            total = self._buffers.take(spec.nbytes).view(spec.dtype).zero_()
            add_into(total, update, weight)
        self._sums[name] = total
        self._weights[name] = weight

    def add_chunk(self, name: str, start: int, values: torch.Tensor, weight: float) -> None:
        """sum[name][start:start + len(values)] += weight * values: one chunk of a push
        added in place (`server/inplace.py`); `count` counts the push once it is whole.
        Elements no push wrote yet are written (weight * values, as an add to zero gives),
        not zero-filled first: one pass over the sum fewer per step."""
        total = self._sums.get(name)
        if total is None:
            spec = self._spec_of(name)
            total = self._sums[name] = self._buffers.take(spec.nbytes).view(spec.dtype)
            self._filled[name] = 0
        end, filled = start + values.numel(), self._filled.get(name, total.numel())
        if start < filled:
            _span(total, start, min(end, filled)).add_(_span(values, 0, filled - start),
                                                       alpha=weight)
        if end > filled:
            if start > filled:  # not from an in-order push; never left unwritten
                total[filled:start].zero_()
            fresh = _span(total, max(start, filled), end)
            first = _span(values, max(filled - start, 0), values.numel())
            if weight == 1.0:
                fresh.copy_(first)
            else:
                torch.mul(first, weight, out=fresh)
            self._filled[name] = end

    def read_chunk(self, name: str, start: int, count: int,
                   fill: Callable[[torch.Tensor], None], weight: float) -> bool:
        """`add_chunk` where no push wrote yet (else False), `fill(view)` writing and checking
        the values straight into the sum; if it raises, the sum is as it was."""
        total = self._sums.get(name)
        if start != (0 if total is None else self._filled.get(name, total.numel())):
            return False
        if total is None:  # kept only once filled (a refused chunk leaves no sum behind)
            spec = self._spec_of(name)
            total = self._buffers.take(spec.nbytes).view(spec.dtype)
        fill(total[start:start + count])
        if weight != 1.0:
            total[start:start + count].mul_(weight)
        self._sums[name], self._filled[name] = total, start + count
        return True

    def _fill(self, name: str) -> None:
        """Zero what no push wrote yet of a sum (before a whole update is added to it)."""
        filled = self._filled.pop(name, None)
        total = self._sums[name]
        if filled is not None and filled < total.numel():
            total[filled:].zero_()

    def count(self, names: list[str], weight: float) -> None:
        """Count a push whose chunks were added with `add_chunk`."""
        for name in names:
            self._weights[name] = self._weights.get(name, 0.0) + weight
        self.push_weight += weight

    def add_push(self, updates: dict[str, Update], weight: float,
                 source: PooledBuffers) -> None:
        for name, update in updates.items():
            self.add(name, update, weight, source)
        self.push_weight += weight

    def weights(self) -> dict[str, float]:
        """Per tensor, the weight of the pushes that held it (`push_weight`: of all)."""
        return dict(self._weights)

    def means(self) -> dict[str, torch.Tensor]:
        """The weighted mean per tensor, computed in place (the sums are gone after)."""
        return self.divided_by(self._weights)

    def sums(self) -> dict[str, torch.Tensor]:
        """The weighted sums per tensor, to change in place before the division (DP noise;
        owned here: they are gone after `release()`)."""
        for name in list(self._filled):
            self._fill(name)
        return dict(self._sums)

    def divided_by(self, totals: dict[str, float]) -> dict[str, torch.Tensor]:
        """Each sum divided by totals[name] in place (the sums are gone after)."""
        return {name: total if totals[name] == 1.0 else total.div_(totals[name])
                for name, total in self.sums().items()}

    def release(self) -> None:
        self._sums, self._weights, self.push_weight, self._filled = {}, {}, 0.0, {}
        self._buffers.release()


def _span(flat: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """flat[start:end], without a slicing op (a few us each) when that is all of it: a
    small model's chunk is mostly a whole tensor (issue #14)."""
    return flat if start == 0 and end >= flat.numel() else flat[start:end]


def _common(totals: dict[str, float]) -> float | None:
    """The one weight every tensor is divided by, if they share one (else None)."""
    values = set(totals.values())
    return values.pop() if len(values) == 1 else None


class StepAssembly:
    """The synchronous step being assembled: who pushed it, and the aggregate of their
    pushes. Shared by the sync and federated-round policies, which differ only in whose
    pushes close the step. Not thread-safe: the owning policy holds its lock around calls.

    Pushes that already carry the server's momentum (`momentum_applied`, DGC's momentum
    correction on the worker) are summed apart and applied with plain SGD; both parts are
    divided by the step's total weight, so the step is the mean over every push.
    """

    def __init__(self, store: ParameterStore, pool: BufferPool, clock: Clock,
                 over_all_pushes: bool = False, base_lr: float = 1.0) -> None:
        self._store = store
        self._pool = pool
        self._clock = clock
        self._over_all_pushes = over_all_pushes  # see _totals
        self._base_lr = base_lr  # the server's --lr, which stated rates replace
        self._rules = StepRules()
        self.pushed: set[str] = set()
        self._incarnations: dict[str, int] = {}  # of the pushed sessions
        self.opened_at: float | None = None  # the first push of the open step
        # In-place pushes (`server/inplace.py`): how many are being received (the step
        # waits for them), the aggregate generation they add to (a discard starts a new
        # one), and the workers whose pushes a discard dropped (they push the step again).
        self.streams = 0
        self.generation = 0
        self.discarded: frozenset[str] = frozenset()
        self._aggregate = Aggregate(pool, store.spec)
        self._corrected = Aggregate(pool, store.spec)  # pushes with momentum applied
        self._in_order: InOrder | None = None  # see in_order()

    def in_order(self, workers: Iterable[str]) -> None:
        """Sum the open step's pushes in the order of `workers` (they are its only
        pushers), whatever order they arrive in: the same pushes give bit-identical sums."""
        if self._in_order is not None:
            self._in_order.discard()
        self._in_order = InOrder(self._pool, workers)

    def check(self, worker_id: str, step: int, incarnation: int = 0) -> None:
        """Refuse a push for another step than the open one, or a second push of it. The
        push of a later `incarnation` of a worker whose earlier one pushed this step (a
        process torchrun restarted, or one evicted and back) is ABORTED like a late push:
        its predecessor's gradient counts for the step, which closes without waiting for
        another, and the worker pulls the next version (issue #15)."""
        current = self._store.version
        if step < current:
            raise Aborted(f"step {step} already closed without this push (the server is at "
                          f"step {current}); pull version {current} and go on")
        if step > current:
            raise FailedPrecondition(
                f"push for step {step}, but the server is assembling step {current}; "
                f"pull version {current} and recompute the gradient")
        if worker_id in self.pushed:
            earlier = self._incarnations.get(worker_id, 0)
            if incarnation > earlier:
                raise Aborted(f"step {step} holds the push of incarnation {earlier} of worker "
                              f"{worker_id!r}, which counts for it; pull version {step + 1} "
                              "once the step closes and go on")
            raise FailedPrecondition(f"worker {worker_id!r} already pushed step {step}")

    def add(self, push: ReceivedPush) -> None:
        self.check(push.worker_id, push.step, push.incarnation)
        self._counted(push.worker_id, push.incarnation)
        if self._in_order is None:
            self._sum(push)
            return
        for due in self._in_order.arrive(push):
            self._sum(due)
            due.buffers.release()  # what the aggregate did not adopt

    def _counted(self, worker_id: str, incarnation: int) -> None:
        self.pushed.add(worker_id)
        self._incarnations[worker_id] = incarnation
        self.discarded -= {worker_id}
        if self.opened_at is None:
            self.opened_at = self._clock()

    def _sum(self, push: ReceivedPush) -> None:
        target = self._corrected if push.momentum_applied else self._aggregate
        target.add_push(push.updates, push.weight, push.buffers)
        self._rules.add(push.options)

    # ---- in-place pushes: added chunk by chunk (`server/inplace.py`, issue #14) ----------

    def begin_stream(self, worker_id: str, step: int, incarnation: int = 0) -> int:
        """A push about to add its chunks: the generation it adds to."""
        self.check(worker_id, step, incarnation)
        self.streams += 1
        return self.generation

    def add_chunk(self, generation: int, name: str, start: int, values: torch.Tensor,
                  weight: float, corrected: bool) -> None:
        self._require(generation)
        target = self._corrected if corrected else self._aggregate
        target.add_chunk(name, start, values, weight)

    def read_chunk(self, generation: int, name: str, start: int, count: int,
                   fill: Callable[[torch.Tensor], None], weight: float, corrected: bool) -> bool:
        self._require(generation)
        if self.streams > 1:  # not under the lock while another push waits to add
            return False
        target = self._corrected if corrected else self._aggregate
        return target.read_chunk(name, start, count, fill, weight)

    def end_stream(self, generation: int, worker_id: str, step: int, names: list[str],
                   weight: float, corrected: bool, options: StepOptions,
                   incarnation: int = 0) -> None:
        """Count a push whose chunks were all added; raise (the caller discards the step if
        it added any) when its generation was discarded or it may not join the step."""
        self.streams -= 1
        self._require(generation)
        self.check(worker_id, step, incarnation)
        (self._corrected if corrected else self._aggregate).count(names, weight)
        self._rules.add(options)
        self._counted(worker_id, incarnation)

    def _require(self, generation: int) -> None:
        if generation != self.generation:
            step = self._store.version
            raise StepDiscarded(f"step {step}: its aggregate, which this push was being "
                                f"added to, was discarded; push step {step} again")

    def discard(self) -> None:
        """Drop the step's aggregate: a push failed after adding to it. Every worker whose
        push it held must push the step again (`discarded`); nothing is applied."""
        dropped = self.discarded | self.pushed
        self._aggregate.release()
        self._corrected.release()
        self._reset()
        self.discarded = dropped
        self.generation += 1

    def waited_s(self) -> float:
        return 0.0 if self.opened_at is None else self._clock() - self.opened_at

    def close(self, finish: Callable[[dict[str, torch.Tensor]], dict[str, float]] | None = None,
              ) -> int:
        """Apply the weighted mean as one optimizer step, under the step's rules (see
        `step_rules`): skipped if a push found inf/NaN, clipped, at the stated rate. Pushes
        with momentum applied join it as a plain SGD step. Returns the new version.
        `finish(sums)` may change the sums in place and returns their divisors instead of
        the weights (DP-FedAvg: noise, and the number of sampled clients)."""
        if self._in_order is not None:  # those behind a worker that never pushed
            for push in self._in_order.rest():
                self._sum(push)
                push.buffers.release()
        if self._rules.found_inf:
            return self.skip()
        totals = self._totals()
        with self._aggregate, self._corrected:
            if finish is not None:  # e.g. DP noise into the sums, a fixed denominator
                totals = {**totals, **finish(self._aggregate.sums())}
            lr_scale = self._rules.lr_scale(self._base_lr)
            divisor = _common(totals) if not self._rules.max_norms else None
            if divisor is not None:  # divided inside the optimizer's pass (issue #14)
                version = self._store.apply(self._aggregate.sums(), lr_scale,
                                            plain=self._corrected.sums() or None,
                                            divisor=divisor)
            else:
                means = self._aggregate.divided_by(totals)
                self._rules.clip(means)
                version = self._store.apply(means, lr_scale,
                                            plain=self._corrected.divided_by(totals) or None)
        self._reset()
        return version

    def _totals(self) -> dict[str, float]:
        """Per tensor, the weight both sums are divided by: of every push of the step
        (`over_all_pushes`: a push without a tensor counts as a zero gradient for it, DDP's
        mean over all ranks with find_unused_parameters=True), else of the pushes, raw or
        corrected, that held the tensor."""
        raw, corrected = self._aggregate, self._corrected
        if self._over_all_pushes:
            everyone = raw.push_weight + corrected.push_weight
            return {name: everyone for name in {*raw.weights(), *corrected.weights()}}
        totals = raw.weights()
        for name, weight in corrected.weights().items():
            totals[name] = totals.get(name, 0.0) + weight
        return totals

    def skip(self) -> int:
        """Drop the pushes and advance the version with the parameters unchanged."""
        self._aggregate.release()
        self._corrected.release()
        self._reset()
        return self._store.apply({})

    def _reset(self) -> None:
        if self._in_order is not None:
            self._in_order.discard()
            self._in_order = None
        self.pushed, self.opened_at, self._incarnations = set(), None, {}
        self.discarded = frozenset()
        self._rules = StepRules()
        self._aggregate = Aggregate(self._pool, self._store.spec)
        self._corrected = Aggregate(self._pool, self._store.spec)
