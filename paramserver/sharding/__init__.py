"""The partition plan: which shard owns which elements of which tensor. Pure, no I/O."""

from paramserver.sharding.plan import PartitionPlan, TensorSlice, plan_partition

__all__ = ["PartitionPlan", "TensorSlice", "plan_partition"]
