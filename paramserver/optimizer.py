"""Server-side optimizers applied to the aggregated gradient.

We reuse torch.optim rather than re-deriving the update rules, so a parameter server step is
the same math as `optimizer.step()` in a single process (the equivalence test relies on it).
SGD runs torch's fused implementation: one pass over parameters, gradients and momentum
(the single-tensor path makes four), which also divides the gradient by the step's total
weight in that pass (`grad_scale`), so a sum of pushes needs no separate divide (issue #14).
The server calls that kernel itself (`fused_sgd_step`): `Optimizer.step()` spends 0.2-0.7 ms
per call around a kernel that takes 35 us on a 40 KB model, a fixed cost of every step.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose from {OPTIMIZERS}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        params = list(params)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(self.beta1, self.beta2),
                                    eps=self.eps, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov,
                               fused=True)

    def warm_up(self) -> None:
        """Build this optimizer on one element and step it once: constructing and stepping a
        torch optimizer imports torch._dynamo and sympy (~800 modules, +73 MB resident)
        the first time, which a server should pay at start-up, not in its first step."""
        param = torch.zeros(1, requires_grad=True)
        param.grad = torch.zeros(1)
        self.build([param]).step()

    def describe(self) -> str:
        if self.name == "adam":
            return (f"adam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), "
                    f"weight_decay={self.weight_decay})")
        return (f"sgd(lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov})")


def fused_sgd_step(optimizer: torch.optim.Optimizer,
                   pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], lr_scale: float = 1.0,
                   divisor: float = 1.0) -> bool:
    """One step of a fused, single-group torch.optim.SGD on (param, grad) pairs, with each
    grad divided by `divisor` and the rate times `lr_scale`: torch's own fused kernel and
    the optimizer's own state (`momentum_buffer`, so state_dict and checkpoints are those of
    `optimizer.step()`), without its per-call machinery. False (nothing done) for any other
    optimizer, which the caller then steps itself.

    torch creates momentum buffers only when no parameter has one yet; a parameter whose
    first gradient comes later gets a zero buffer here: momentum * 0 + grad is the grad,
    which the unfused first step stores (dampening 0, the only one OptimizerConfig makes)."""
    groups = optimizer.param_groups
    if not isinstance(optimizer, torch.optim.SGD) or len(groups) != 1 or not groups[0]["fused"]:
        return False
    if not pairs:
        return True
    group = groups[0]
    params = [param for param, _ in pairs]
    momentum = group["momentum"]
    buffers, first = _momentum_buffers(optimizer, params) if momentum != 0 else ([], False)
    with torch.no_grad():
        torch._fused_sgd_(  # type: ignore[attr-defined]
            params, [grad for _, grad in pairs], buffers,
            weight_decay=group["weight_decay"], momentum=momentum,
            lr=group["lr"] * lr_scale, dampening=group["dampening"],
            nesterov=group["nesterov"], maximize=group["maximize"], is_first_step=first,
            grad_scale=None if divisor == 1.0 else _divisor_tensor(divisor))
    return True


@functools.lru_cache(maxsize=16)
def _divisor_tensor(divisor: float) -> torch.Tensor:
    """The 0-d tensor the kernel divides by, made once per divisor (a sync step's is W
    every step): making one is a torch call of 3-9 us, per step (issue #14). The kernel
    only reads it."""
    return torch.tensor(divisor, dtype=torch.float32)


def _momentum_buffers(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]
                      ) -> tuple[list[torch.Tensor], bool]:
    """Each param's momentum buffer, made and kept in the optimizer's state where missing
    (see `fused_sgd_step`); True when none existed (the kernel's first step fills them)."""
    held = [optimizer.state[param].get("momentum_buffer") for param in params]
    first = all(buffer is None for buffer in held)
    buffers = [torch.empty_like(param) if first else
               buffer if buffer is not None else torch.zeros_like(param)
               for param, buffer in zip(params, held)]
    for param, buffer in zip(params, buffers):
        optimizer.state[param]["momentum_buffer"] = buffer
    return buffers, first
