"""Updates as integers in the ring Z_{2^32}, so that masks add without rounding.

A client clips each element of its update to [-clip, clip], rounds it to a multiple of
`quantum = clip / levels` (an integer q in [-levels, levels]), and multiplies q by its
integer weight w (clients pre-scale). The server announces `levels = floor((2^31 - 1) / W)`
for the total weight W of the round's clients, so the true sum sum_u w_u q_u never leaves
[-(2^31 - 1), 2^31 - 1]: read as a signed 32-bit integer it is exact. Decoding divides by
the weight of the clients whose inputs were summed.

Bound: for |x| <= clip, each client's value is off by at most quantum / 2 per element, and
so is the weighted mean (a convex combination of the errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODULUS = 1 << 32
MAX_SUM = (1 << 31) - 1


@dataclass(frozen=True)
class Quantizer:
    clip: float  # elements are clipped to [-clip, clip]
    levels: int  # clip maps to this integer

    def __post_init__(self) -> None:
        if self.clip <= 0 or self.levels < 1:
            raise ValueError(f"need clip > 0 and levels >= 1, got {self.clip}, {self.levels}")

    @classmethod
    def for_total_weight(cls, clip: float, total_weight: int) -> Quantizer:
        """The finest quantiser whose weighted sum over clients of total weight
        `total_weight` cannot overflow the signed 32-bit range."""
        if not 1 <= total_weight <= MAX_SUM:
            raise ValueError(f"the round's total weight {total_weight} must be in "
                             f"[1, {MAX_SUM}] under secure aggregation")
        return cls(clip, MAX_SUM // total_weight)

    @property
    def quantum(self) -> float:
        """The rounding step: the stated error bound of a decoded mean is quantum / 2."""
        return self.clip / self.levels

    def encode(self, values: np.ndarray, weight: int) -> np.ndarray:
        """weight * round(clip(values) / quantum), as uint32 (mod 2^32)."""
        if weight < 1:
            raise ValueError(f"a weight is a positive integer, got {weight}")
        clipped = np.clip(np.asarray(values, dtype=np.float64), -self.clip, self.clip)
        q = np.clip(np.rint(clipped / self.quantum), -self.levels, self.levels)
        return np.mod(q.astype(np.int64) * weight, MODULUS).astype(np.uint32)

    def decode(self, total: np.ndarray, total_weight: int) -> np.ndarray:
        """The weighted mean (float64) from the unmasked ring sum of the clients of
        `total_weight`."""
        signed = total.astype(np.int64)
        signed[signed > MAX_SUM] -= MODULUS
        return signed.astype(np.float64) * (self.quantum / total_weight)
