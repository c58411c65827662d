"""Shamir secret sharing (1979) over the prime field GF(2^521 - 1).

A secret of up to 64 bytes is the constant term of a random polynomial of degree t - 1;
holder x gets the polynomial's value at x (x >= 1). Any t shares give the secret back by
Lagrange interpolation at 0; fewer than t say nothing about it. A share travels as 66 bytes,
big-endian.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

PRIME = (1 << 521) - 1  # a Mersenne prime, larger than any 64-byte secret
SHARE_BYTES = 66
SECRET_BYTES = 32


def split(secret: bytes, holders: Iterable[int], threshold: int) -> dict[int, int]:
    """Shares of `secret` for the evaluation points `holders` (distinct, in [1, PRIME))."""
    points = list(holders)
    if len(set(points)) != len(points) or not all(0 < x < PRIME for x in points):
        raise ValueError("holders must be distinct points in [1, PRIME)")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} must be in [1, {len(points)}]")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in points}


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):  # Horner
        value = (value * x + c) % PRIME
    return value


def combine(shares: Mapping[int, int], length: int = SECRET_BYTES) -> bytes:
    """The secret from (at least threshold) shares {x: y}, as `length` bytes."""
    if not shares:
        raise ValueError("no shares")
    secret = 0
    for xi, yi in shares.items():
        numerator = denominator = 1
        for xj in shares:
            if xj != xi:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * length):
        raise ValueError("the shares do not interpolate to a secret of this length "
                         "(too few, or inconsistent)")
    return secret.to_bytes(length, "big")


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share must be below the field prime")
    return value
