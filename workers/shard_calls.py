"""What one per-shard call of the client takes and answers. Each call runs on a fan-out
thread and reports in one of these records, which the calling thread merges once every
shard answered."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from paramserver.errors import InvalidArgument
from paramserver.types import BUFFER_PREFIX, PushResult, StepOptions
from workers.routes import Route, ShardRoutes
from workers.tensor_io import HostMirror


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
