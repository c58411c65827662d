"""What a training loop's step options do to an update: the rate, clipping, skipped steps.

A worker's closing push carries `StepOptions` (issue #18): the learning rate its optimizer
holds (so an LR scheduler in the loop drives the servers), a bound on the gradient's total
2-norm (clipping the *aggregated* gradient, as `clip_grad_norm_` does after DDP's all-reduce)
and whether GradScaler found inf/NaN (the step is skipped, as `GradScaler.step` skips
`optimizer.step()`). In a sync step several workers state options; they are combined so that
the result does not depend on the order pushes arrive in:

- the rate is the smallest any push stated (workers running the same scheduler agree; a
  worker that lags or leads by a step cannot raise the rate for everyone);
- the clipping bound is the smallest stated;
- one push that found inf/NaN skips the step for everyone (under DDP the all-reduced
  gradient holds the inf on every rank, so every rank skips).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from paramserver.types import StepOptions

log = logging.getLogger(__name__)
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: coef = max_norm / (norm + 1e-6)


class StepRules:
    """The combined options of one step's pushes (see the module docstring)."""

    def __init__(self) -> None:
        self.lrs: set[float] = set()
        self.max_norms: set[float] = set()
        self.found_inf = False

    def add(self, options: StepOptions) -> None:
        if options.lr is not None:
            self.lrs.add(options.lr)
        if options.max_grad_norm is not None:
            self.max_norms.add(options.max_grad_norm)
        self.found_inf = self.found_inf or options.found_inf

    def lr_scale(self, base_lr: float) -> float:
        """The factor on the server's --lr that gives the stated rate (1 when none)."""
        if not self.lrs:
            return 1.0
        if len(self.lrs) > 1:
            log.warning("the workers of this step state different learning rates %s: the "
                        "step uses the smallest", sorted(self.lrs))
        return min(self.lrs) / base_lr

    def clip(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Scale `grads` in place so their total 2-norm is at most the bound, exactly as
        torch.nn.utils.clip_grad_norm_ does (same epsilon, same clamp)."""
        if not self.max_norms or not grads:
            return
        max_norm = min(self.max_norms)
        norms = [torch.linalg.vector_norm(g.detach(), 2.0) for g in grads.values()]
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        coef = torch.clamp(max_norm / (total + CLIP_EPS), max=1.0)
        for grad in grads.values():
            grad.mul_(coef.to(grad.dtype))


def unscale(updates: Mapping[str, object], grad_scale: float) -> None:
    """Divide loss-scaled gradients by their scale in place (values of Dense/SparseUpdate),
    as GradScaler.unscale_ does: times the float32 reciprocal of the scale."""
    if grad_scale == 1.0:
        return
    inverse = torch.tensor(grad_scale, dtype=torch.float64).reciprocal().float()
    for update in updates.values():
        values: torch.Tensor = update.values  # type: ignore[attr-defined]
        values.mul_(inverse.to(values.dtype))
