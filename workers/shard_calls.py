"""What one per-shard call of the client takes and answers. Each call runs on a fan-out
thread and reports in one of these records, which the calling thread merges once every
shard answered."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paramserver.types import PushResult, StepOptions
from workers.routes import Route


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
