"""Where each byte of each parameter goes: per shard, the stored slices and their byte ranges.

Built once from the partition plan at attach time, so the step's hot path only slices
memoryviews (no copies) and looks up targets by index.
"""

from __future__ import annotations

from dataclasses import dataclass

from paramserver.sharding import PartitionPlan
from paramserver.types import TensorSpec


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
