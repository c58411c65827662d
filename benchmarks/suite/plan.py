"""What a run measures: the full matrix of issue #7, or the quick subset (under a minute).

The full run is sized to finish in about 10 minutes on 2 cores: every combination of model
size and worker count for every system, with the codecs on one shard and `none` on two;
the link caps at one size (16 MB, W=2), where 100 Mbit/s still takes seconds per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness import CAPS
from benchmarks.suite.ours import Group

SIZES_MB = (1.0, 16.0, 100.0)
WORKERS = (1, 2, 4)
CODECS = ("none", "fp16", "qsgd:bits=8", "topk:ratio=0.01")
PEERS = ("gloo-allreduce", "rpc-ps")


@dataclass(frozen=True)
class Plan:
    name: str
    warmup: int  # steps (rounds) before the timed ones, per row
    reps: int  # timed steps per row: every figure is their median, with min and max
    floor_sizes: tuple[float, ...]
    floor_grpc_workers: tuple[int, ...]
    sync_groups: tuple[Group, ...]
    async_groups: tuple[tuple[float, int], ...]  # (model MB, workers)
    async_windows: int
    async_window_s: float
    peer_groups: tuple[tuple[float, int], ...]  # (model MB, workers), each peer
    cap_model_mb: float
    cap_workers: int
    caps: tuple[str, ...]
    cap_codecs: tuple[str, ...]
    cap_peers: tuple[str, ...]
    cap_warmup: int
    cap_reps: int
    convergence_modes: tuple[str, ...]  # "ssp" runs only where `paramserver serve` has it
    convergence_workers: int
    target_accuracy: float
    convergence_max_s: float
    convergence_reps: int
    soak_model_mb: float
    soak_workers: int
    soak_pushes: int

    @property
    def pool_size(self) -> int:
        """Processes the pool needs: the largest job (the TCP floor takes two)."""
        return max(2, self.convergence_workers, self.soak_workers,
                   *(g.workers for g in self.sync_groups), *(w for _, w in self.async_groups),
                   *(w for _, w in self.peer_groups))


FULL = Plan(
    name="full", warmup=2, reps=5,
    floor_sizes=SIZES_MB, floor_grpc_workers=(1, 2),
    sync_groups=tuple([Group(mb, w, 1, CODECS) for mb in SIZES_MB for w in WORKERS]
                      + [Group(mb, w, 2) for mb in SIZES_MB for w in WORKERS]),
    async_groups=tuple((mb, w) for mb in SIZES_MB for w in WORKERS),
    async_windows=3, async_window_s=1.0,
    peer_groups=tuple((mb, w) for mb in SIZES_MB for w in WORKERS),
    cap_model_mb=16.0, cap_workers=2, caps=CAPS, cap_codecs=CODECS, cap_peers=PEERS,
    cap_warmup=1, cap_reps=3,
    convergence_modes=("sync", "async", "ssp"), convergence_workers=4, target_accuracy=0.95, convergence_max_s=30.0, convergence_reps=3,
    soak_model_mb=1.0, soak_workers=2, soak_pushes=10_000,
)

QUICK = Plan(
    name="quick", warmup=1, reps=3,
    floor_sizes=(1.0,), floor_grpc_workers=(2,),
    sync_groups=(Group(1.0, 2, 1, ("none", "topk:ratio=0.01")),),
    async_groups=((1.0, 2),),
    async_windows=2, async_window_s=0.5,
    peer_groups=((1.0, 2),),
    cap_model_mb=1.0, cap_workers=2, caps=("unlimited", "100mbit"), cap_codecs=("none",),
    cap_peers=("gloo-allreduce",), cap_warmup=1, cap_reps=2,
    convergence_modes=("sync", "async"), convergence_workers=2, target_accuracy=0.9, convergence_max_s=15.0, convergence_reps=1,
    soak_model_mb=1.0, soak_workers=2, soak_pushes=400,
)
