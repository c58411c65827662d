"""Split a model's tensors over N shards: small tensors whole, large ones in slices.

Every slice is a contiguous element range [start, start + length) of a tensor's flattened
form, so a slice's bytes are a contiguous view of the tensor and reassembly is a copy into
place. Optimizers that update element by element (SGD with momentum and weight decay, Adam)
give identical results sliced or whole.

The algorithm (a water-filling variant of BytePS's partitioning):
1. Every shard gets the same byte target, ceil(total / N).
2. Tensors of at most `WHOLE_FRACTION` of a shard's share stay whole and are placed largest
   first on the least-loaded shard (list scheduling: max load <= mean + largest item).
3. The remaining, larger tensors are poured in layout order into the room each shard has
   left under its target, cut wherever a shard fills up.
Hence the largest shard holds at most (1 + WHOLE_FRACTION) x the mean, for any layout, up
to the rounding of slice boundaries to whole elements.
The plan depends only on the layout and N, and is recorded on the servers at registration,
so workers that join later reuse it instead of recomputing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paramserver.types import ModelLayout, TensorSpec

WHOLE_FRACTION = 0.1  # tensors up to this fraction of a shard's share are never cut


@dataclass(frozen=True, order=True)
class TensorSlice:
    """Elements [start, start + length) of the flattened tensor `tensor`, owned by `shard`."""

    tensor: str
    start: int
    length: int
    shard: int

    def key(self, spec: TensorSpec) -> str:
        """The name this slice is stored under on its shard: the tensor's name if whole."""
        if self.start == 0 and self.length == spec.numel:
            return spec.name
        return f"{spec.name}[{self.start}:{self.start + self.length}]"

    def stored_spec(self, spec: TensorSpec) -> TensorSpec:
        """How the shard holds this slice: whole tensors keep their shape, slices are 1-D."""
        if self.start == 0 and self.length == spec.numel:
            return spec
        return TensorSpec(self.key(spec), (self.length,), spec.dtype)


@dataclass(frozen=True)
class PartitionPlan:
    """Where every element of every tensor of `layout` lives among `num_shards` shards."""

    layout: ModelLayout
    num_shards: int
    slices: tuple[TensorSlice, ...]

    def __post_init__(self) -> None:
        validate(self)

    def slices_of(self, name: str) -> tuple[TensorSlice, ...]:
        return tuple(s for s in self.slices if s.tensor == name)

    def shard_slices(self, shard: int) -> tuple[TensorSlice, ...]:
        """Slices stored on `shard`, in layout order."""
        order = {t.name: i for i, t in enumerate(self.layout.tensors)}
        return tuple(sorted((s for s in self.slices if s.shard == shard),
                            key=lambda s: (order[s.tensor], s.start)))

    def shard_layout(self, shard: int) -> ModelLayout:
        """The layout shard `shard` registers: one stored spec per slice it owns."""
        specs = self.layout.by_name()
        return ModelLayout(tuple(s.stored_spec(specs[s.tensor]) for s in self.shard_slices(shard)))

    def shard_bytes(self) -> list[int]:
        specs = self.layout.by_name()
        totals = [0] * self.num_shards
        for s in self.slices:
            totals[s.shard] += s.length * specs[s.tensor].dtype.itemsize
        return totals


def validate(plan: PartitionPlan) -> None:
    """Every element of every tensor is owned by exactly one slice on a valid shard."""
    if plan.num_shards < 1:
        raise ValueError(f"a plan needs at least one shard, got {plan.num_shards}")
    specs = plan.layout.by_name()
    covered: dict[str, list[tuple[int, int]]] = {name: [] for name in specs}
    for s in plan.slices:
        if s.tensor not in specs:
            raise ValueError(f"slice of unknown tensor {s.tensor!r}")
        if not 0 <= s.shard < plan.num_shards:
            raise ValueError(f"slice of {s.tensor!r} on shard {s.shard} of {plan.num_shards}")
        if s.start < 0 or s.length < 0:
            raise ValueError(f"slice of {s.tensor!r} has a negative range")
        covered[s.tensor].append((s.start, s.length))
    for name, ranges in covered.items():
        ranges.sort()
        position = 0
        for start, length in ranges:
            if start != position:
                raise ValueError(f"tensor {name!r}: slices leave a gap or overlap at {position}")
            position += length
        if position != specs[name].numel or not ranges:
            raise ValueError(f"tensor {name!r}: slices cover {position} of "
                             f"{specs[name].numel} elements")


def plan_partition(layout: ModelLayout, num_shards: int) -> PartitionPlan:
    """The deterministic plan for `layout` over `num_shards` shards (see module docstring)."""
    if num_shards < 1:
        raise ValueError(f"need at least one shard, got {num_shards}")
    total = layout.nbytes
    target = math.ceil(total / num_shards)
    whole_limit = WHOLE_FRACTION * total / num_shards
    loads = [0] * num_shards
    slices: list[TensorSlice] = []

    small = [t for t in layout.tensors if t.nbytes <= whole_limit or num_shards == 1]
    for spec in sorted(small, key=lambda t: -t.nbytes):  # stable: ties keep layout order
        shard = min(range(num_shards), key=lambda i: (loads[i], i))
        slices.append(TensorSlice(spec.name, 0, spec.numel, shard))
        loads[shard] += spec.nbytes

    shard = 0
    for spec in (t for t in layout.tensors if t.nbytes > whole_limit and num_shards > 1):
        start, item = 0, spec.dtype.itemsize
        while start < spec.numel:
            # Round to the nearest element: each shard ends within half an element of target.
            room = (2 * (target - loads[shard]) + item) // (2 * item)
            if room <= 0 and shard < num_shards - 1:
                shard += 1
                continue
            length = spec.numel - start if shard == num_shards - 1 else min(room,
                                                                             spec.numel - start)
            slices.append(TensorSlice(spec.name, start, length, shard))
            loads[shard] += length * item
            start += length
    return PartitionPlan(layout, num_shards, tuple(slices))
