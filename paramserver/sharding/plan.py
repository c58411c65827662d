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
so workers that join later reuse it instead of recomputing it. The plan itself is a record
(`PartitionPlan` in `paramserver.types`, beside the other records both sides share).
"""

from __future__ import annotations

import math

from paramserver.types import ModelLayout, PartitionPlan, TensorSlice, TensorSpec

WHOLE_FRACTION = 0.1  # tensors up to this fraction of a shard's share are never cut


def plan_partition(layout: ModelLayout, num_shards: int) -> PartitionPlan:
    """The deterministic plan for `layout` over `num_shards` shards (see module docstring)."""
    if num_shards < 1:
        raise ValueError(f"need at least one shard, got {num_shards}")
    total = layout.nbytes
    whole_limit = WHOLE_FRACTION * total / num_shards
    loads = [0] * num_shards
    slices: list[TensorSlice] = []

    small = [t for t in layout.tensors if t.nbytes <= whole_limit or num_shards == 1]
    for spec in sorted(small, key=lambda t: -t.nbytes):  # stable: ties keep layout order
        shard = min(range(num_shards), key=lambda i: (loads[i], i))
        slices.append(TensorSlice(spec.name, 0, spec.numel, shard))
        loads[shard] += spec.nbytes

    large = [t for t in layout.tensors if t.nbytes > whole_limit and num_shards > 1]
    slices += _cut_in_ranges(large, loads, math.ceil(total / num_shards))
    return PartitionPlan(layout, num_shards, tuple(slices))


def _cut_in_ranges(large: list[TensorSpec], loads: list[int],
                   target: int) -> list[TensorSlice]:
    """Contiguous element ranges of the large tensors, filling shards in order up to
    `target` bytes each (the last shard takes the rest); `loads` is updated in place."""
    slices = []
    shard, last = 0, len(loads) - 1
    for spec in large:
        start, item = 0, spec.dtype.itemsize
        while start < spec.numel:
            # Round to the nearest element: each shard ends within half an element of target.
            room = (2 * (target - loads[shard]) + item) // (2 * item)
            if room <= 0 and shard < last:
                shard += 1
                continue
            length = spec.numel - start if shard == last else min(room, spec.numel - start)
            slices.append(TensorSlice(spec.name, start, length, shard))
            loads[shard] += length * item
            start += length
    return slices
