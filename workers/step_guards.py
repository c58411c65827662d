"""Guards around a worker's step: the gradients pushed early (overlap hooks) must be the
ones the step ends with, and a step skipped for inf/NaN must not leave non-finite
error-feedback state behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workers.parameter_client import ParameterClient


def fingerprint(grad: torch.Tensor | None) -> torch.Tensor | None:
    """(sum, 2-norm) of a gradient, computed where it lives (no device sync): clipping and
    unscaling change the norm, other edits the sum or the norm. Two reads of the gradient,
    about half what a copy and a full comparison would cost."""
    if grad is None:
        return None
    flat = grad.detach().reshape(-1)
    return torch.stack((flat.sum(), torch.linalg.vector_norm(flat)))


def same_bits(mark: torch.Tensor | None, now: torch.Tensor | None) -> bool:
    """Bit-for-bit equality (NaN equals itself here, unlike torch.equal)."""
    if mark is None or now is None or mark.dtype != now.dtype:
        return False
    return torch.equal(mark.view(torch.uint8), now.view(torch.uint8))


def drop_nonfinite_feedback(client: ParameterClient) -> None:
    """After a step skipped for inf/NaN: error-feedback state that took in the non-finite
    gradient is dropped (it would carry NaN into every later push), as GradScaler drops
    the whole gradient of that step."""
    for feedback in client._feedback:
        if feedback is None:
            continue
        for state in (feedback.residuals, feedback.velocities):
            for key in [k for k, v in state.items() if not bool(torch.isfinite(v).all())]:
                del state[key]
