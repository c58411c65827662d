"""Screen client updates before they touch the aggregate: NaN/Inf is refused, an absurd
norm is refused, a large one is clipped (as configured). A poisoned update never reaches
the global model."""

from __future__ import annotations

import math

import torch

from paramserver.codecs import Update
from paramserver.errors import InvalidArgument


def screen(updates: dict[str, Update], clip_norm: float, reject_norm: float) -> float:
    """Check (and clip in place) one client's update; returns its L2 norm before clipping."""
    squares = 0.0
    for name, update in updates.items():
        values = update.values
        if not bool(torch.isfinite(values).all()):
            raise InvalidArgument(f"update for {name!r} holds NaN or Inf; refused")
        squares += float(values.double().square().sum())
    norm = math.sqrt(squares)
    if reject_norm and norm > reject_norm:
        raise InvalidArgument(f"update norm {norm:.3g} exceeds --reject-norm {reject_norm:g}; "
                              "refused")
    if clip_norm and norm > clip_norm:
        for update in updates.values():
            update.values.mul_(clip_norm / norm)
    return norm
