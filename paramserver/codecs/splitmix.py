"""SplitMix64 (Steele, Lea, Flood 2014; Vigna's reference `splitmix64.c`) as a counter-based
generator, and uniform integers drawn from it: the random-k index generator of docs/wire.md.

Output number c (0-based) of SplitMix64 started from state `seed` depends only on
(seed, c), so k outputs are one vectorised expression over a counter array (numpy uint64
arithmetic wraps modulo 2**64, exactly as the C reference does):

    z = seed + (c + 1) * GAMMA            (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    out = z ^ (z >> 31)

Any language with 64-bit unsigned integers (or BigInt) reproduces it; docs/wire.md lists
test values, and tests/unit/test_golden_vectors.py checks them.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_U = np.uint64


def splitmix64_at(seed: int, counter: int) -> int:
    """Output number `counter` of SplitMix64 from state `seed` (both taken mod 2**64)."""
    z = (seed + (counter + 1) * GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def splitmix64(seed: int, counters: np.ndarray) -> np.ndarray:
    """`splitmix64_at(seed, c)` for every c of a uint64 array, vectorised."""
    # In place on two buffers: fresh multi-megabyte temporaries page-fault on every call.
    z = counters + _U(1)
    shifted = np.empty_like(z)
    with np.errstate(over="ignore"):
        np.multiply(z, _U(GAMMA), out=z)
        np.add(z, _U(seed & MASK64), out=z)
        for shift, mix in ((30, MIX1), (27, MIX2)):
            np.right_shift(z, _U(shift), out=shifted)
            np.bitwise_xor(z, shifted, out=z)
            np.multiply(z, _U(mix), out=z)
        np.right_shift(z, _U(31), out=shifted)
        return np.bitwise_xor(z, shifted, out=z)


def uniform_below(seed: int, n: int, k: int) -> np.ndarray:
    """k integers uniform in [0, n), with replacement, as uint64: the accepted outputs z of
    SplitMix64(seed) in counter order, each reduced to z mod n.

    An output is accepted when z < 2**64 - (2**64 mod n): a whole number of copies of
    [0, n) then remains, so `z mod n` is exactly uniform (no modulo bias). For n < 2**40
    a rejection happens with probability below 2**-24 per draw, so the loop almost always
    runs once.
    """
    if not 0 < n < 1 << 64:
        raise ValueError(f"n must be in [1, 2**64), got {n}")
    spare = (1 << 64) % n  # outputs at or above 2**64 - spare are rejected
    limit = _U((1 << 64) - spare) if spare else None
    modulus = _U(n)
    found: list[np.ndarray] = []
    counter, need = 0, k
    while need > 0:
        z = splitmix64(seed, np.arange(counter, counter + need, dtype=np.uint64))
        counter += need
        if limit is not None and bool((z >= limit).any()):  # rare: filter only then
            z = z[z < limit]
        # z mod n, in place; numpy divides by a scalar several times faster than it takes `%`
        quotient = np.floor_divide(z, modulus)
        np.multiply(quotient, modulus, out=quotient)
        found.append(np.subtract(z, quotient, out=z))
        need -= z.size
    return np.concatenate(found) if found else np.empty(0, dtype=np.uint64)
