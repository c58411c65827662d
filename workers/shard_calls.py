"""What one per-shard call of the client takes and answers. Each call runs on a fan-out
thread and reports in one of these records, which the calling thread merges once every
shard answered."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from paramserver.errors import InvalidArgument
from paramserver.types import BUFFER_PREFIX, Mode, PushResult, StepOptions
from workers.routes import Route, ShardRoutes
from workers.tensor_io import HostMirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPush:
    """One shard's answer to a push."""

    result: PushResult
    target: int  # the version to pull after this push
    aborted: bool = False  # dropped: the step closed without it, or it was too stale
    rejoined: bool = False  # the shard had forgotten our session; the push was dropped


@dataclass(frozen=True)
class ShardPull:
    version: int
    rejoined: bool = False


@dataclass(frozen=True)
class ShardJoin:
    """One shard's answer to attach: did we create its part of the model, at what version."""

    created: bool
    version: int
    rejoined: bool = False


@dataclass(frozen=True)
class StepPush:
    """The inputs of one `push` call, shared by its per-shard calls (read only)."""

    routes: list[tuple[Route, ...]]  # per shard: the slices that have a gradient
    gradients: dict[str, torch.Tensor]
    raw: dict[str, memoryview] | None  # gradients' host bytes, when some shard pushes `none`
    num_samples: int
    more_parts: bool
    options: StepOptions | None = None  # the closing push's step options

    def shards(self, wanted: list[bool]) -> list[int]:
        """The wanted shards this push goes to: those holding any of its slices, and
        every one for the closing push."""
        return [i for i, r in enumerate(self.routes)
                if wanted[i] and (r or not self.more_parts)]


def pushed_shards(mode: Mode, versions: list[int], last: int | None) -> list[bool]:
    """Per shard, whether a step's push goes to it: to every shard, except in a sync job
    that ends at version `last` (`AttachedModel.job_steps`), to none already there.

    Each shard closes a sync step on its own, so a worker that attached or rejoined while
    one shard had closed step v and another had not yet holds them at v+1 and v, and from
    then on pushes "step v+1" to one and "step v" to the other (it cannot level them by
    pushing to the lagging shard alone: a member that pushed the ahead shard's open step
    may be waiting for this worker's push there; tried, it hung a job whose shard was
    restored from an older checkpoint, where the members' pushes of the ahead shard's step
    were already in: tests/integration/test_faults.py, torn_checkpoint). Its last step then pushed step `last`
    to the shard ahead after the other ranks had finished and left, which closed it alone:
    every rank reported version `last`, this one holding a model one step further on that
    shard (issue #15, the torchrun restart test). No push goes beyond the job's end, so
    every shard stops at `last` and every rank ends holding the same model."""
    if mode is not Mode.SYNC or last is None:
        return [True] * len(versions)
    if len(set(versions)) > 1 and max(versions) >= last:
        log.info("shards at versions %s: no push to those at the job's end (%d)", versions,
                 last)
    return [v < last for v in versions]



def gather_step(params: Mapping[str, torch.Tensor], mirrors: Mapping[str, HostMirror],
                routes: ShardRoutes, gradients: Mapping[str, torch.Tensor] | None,
                names: Collection[str] | None, *, num_samples: int, more_parts: bool,
                options: StepOptions | None, broadcast_buffers: bool,
                raw_needed: bool) -> StepPush:
    """The inputs of a push: `gradients`, or the `.grad` of `names` (None: of every
    parameter that has one); the buffers' values on a closing push with
    `broadcast_buffers`; the gradients' host bytes when some shard pushes `none`."""
    chosen = dict(gradients) if gradients is not None else _gradients(params, names)
    if broadcast_buffers and not more_parts:
        chosen.update({n: t for n, t in params.items() if n.startswith(BUFFER_PREFIX)})
    raw = {n: mirrors[n].bytes_of(g) for n, g in chosen.items()} if raw_needed else None
    return StepPush(routes.with_params(chosen), chosen, raw, num_samples, more_parts, options)


def _gradients(params: Mapping[str, torch.Tensor],
               names: Collection[str] | None) -> dict[str, torch.Tensor]:
    """The gradients to push: of `names`, or of every parameter that has one."""
    wanted = params.keys() if names is None else names
    unknown = [n for n in wanted if n not in params]
    if unknown:
        raise InvalidArgument(f"no parameters named {unknown} in the attached model")
    gradients = {n: grad for n in wanted if (grad := params[n].grad) is not None}
    if not gradients and names is None:
        raise InvalidArgument("no parameter has a gradient: call backward() first")
    return gradients
