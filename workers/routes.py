"""Where each byte of each parameter goes: per shard, the stored slices and their byte ranges.

Built once from the partition plan at attach time, so the step's hot path only slices
memoryviews (no copies) and looks up targets by index. `recorded_plan` checks the plan the
servers already hold against the model and the server list before it is used.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from paramserver.errors import FailedPrecondition
from paramserver.sharding import PartitionPlan
from paramserver.types import BUFFER_PREFIX, ModelLayout, Session, TensorSpec


@dataclass(frozen=True)
class Route:
    """One slice stored on a shard: its stored spec and where it sits in the parameter."""

    stored: TensorSpec  # name/shape/dtype as the shard holds it
    param: str  # the model parameter it belongs to
    byte_start: int  # offset of the slice within the parameter's flat bytes
    nbytes: int


@dataclass(frozen=True)
class ShardRoutes:
    """routes[shard] lists that shard's slices in the order of its registered layout."""

    routes: tuple[tuple[Route, ...], ...]

    @classmethod
    def from_plan(cls, plan: PartitionPlan) -> ShardRoutes:
        specs = plan.layout.by_name()
        per_shard = []
        for shard in range(plan.num_shards):
            shard_routes = []
            for piece in plan.shard_slices(shard):
                spec = specs[piece.tensor]
                item = spec.dtype.itemsize
                shard_routes.append(Route(piece.stored_spec(spec), spec.name, piece.start * item,
                                          piece.length * item))
            per_shard.append(tuple(shard_routes))
        return cls(tuple(per_shard))

    def by_key(self, shard: int) -> dict[str, Route]:
        return {route.stored.name: route for route in self.routes[shard]}

    def with_params(self, params: Collection[str]) -> list[tuple[Route, ...]]:
        """Per shard, the routes of the parameters in `params` (in layout order)."""
        return [tuple(r for r in routes if r.param in params) for routes in self.routes]


def recorded_plan(sessions: Sequence[Session], addresses: Sequence[str],
                  layout: ModelLayout) -> PartitionPlan | None:
    """The plan the servers recorded (None: none yet), checked against this model and the
    server list (`addresses[i]` answered `sessions[i]`); FailedPrecondition on a mismatch."""
    recorded = next((s.plan for s in sessions if s.plan is not None), None)
    if recorded is None:
        return None
    for position, (session, address) in enumerate(zip(sessions, addresses)):
        _check_position(session, address, position, recorded)
    if recorded.num_shards != len(addresses):
        raise FailedPrecondition(f"the job's model is split over {recorded.num_shards} "
                                 f"servers, but {len(addresses)} were given")
    reason = recorded.layout.describe_difference(layout)
    if reason:
        raise FailedPrecondition(f"servers hold a different model: {reason}")
    return recorded


def _check_position(session: Session, address: str, position: int,
                    recorded: PartitionPlan) -> None:
    """The server listed at `position` agrees with its peers' plan and holds that shard."""
    if session.plan is None:
        return
    if session.plan != recorded:
        raise FailedPrecondition(f"{address} recorded a different partition plan from its "
                                 "peers")
    if session.shard_index != position:
        raise FailedPrecondition(
            f"{address} holds shard {session.shard_index}, but is listed at position "
            f"{position}: list servers in the job's shard order")


def trainable_keys(routes: Mapping[str, Route], params: Mapping[str, torch.Tensor],
                   ) -> tuple[str, ...]:
    """The stored names of `routes` whose parameter requires grad, or () (pull everything)
    when that is all of them or none. Frozen parameters are pulled once, at attach: nobody
    pushes a gradient for them, so they never change on the servers."""
    keys = tuple(key for key, route in routes.items()
                 if params[route.param].requires_grad or route.param.startswith(BUFFER_PREFIX))
    return keys if keys and len(keys) < len(routes) else ()


def float_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point buffers (BatchNorm running mean and variance), named
    BUFFER_PREFIX + name. Integer buffers (num_batches_tracked) stay local: they only
    matter for BatchNorm with momentum=None."""
    return {BUFFER_PREFIX + name: buffer for name, buffer in model.named_buffers()
            if buffer.dtype.is_floating_point}
