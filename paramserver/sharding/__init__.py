"""The partition plan: which shard owns which elements of which tensor. Pure, no I/O.

The plan record (`PartitionPlan`, `TensorSlice`) is defined in `paramserver.types` with the
other records both sides share, so that `types` never imports this package; it is offered
here too, beside the function that computes it.
"""

from paramserver.sharding.plan import plan_partition
from paramserver.types import PartitionPlan, TensorSlice

__all__ = ["PartitionPlan", "TensorSlice", "plan_partition"]
