"""The seeded initialiser of table rows: a row's value depends only on (seed, table, row id).

    key(j)  = splitmix64(splitmix64(seed ^ fnv1a64(table name)) + row) + j)   (mod 2^64)
    u(j)    = (key(j) >> 40) / 2^24                                           in [0, 1)
    row[j]  = scale * (2 u(j) - 1)                                            in [-scale, scale)

for j in 0..dim-1, computed in float32 (u has 24 bits, exact in float32). splitmix64 is
Steele, Lea and Flood's finaliser (Java 8 SplittableRandom). No state is kept, so the
shard count, the order of first touches and a restart change nothing: a single-process
baseline gets the same initial table from `initial_rows(spec, arange(rows))`.
"""

from __future__ import annotations

import numpy as np
import torch

from paramserver.tables.records import TableSpec

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _fnv1a64(text: str) -> int:
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def table_key(spec: TableSpec) -> np.uint64:
    """The per-table stream key: splitmix64(seed ^ fnv1a64(name))."""
    mixed = np.array([spec.init_seed ^ _fnv1a64(spec.name)], dtype=np.uint64)
    return _splitmix64(mixed)[0]


def initial_rows(spec: TableSpec, ids: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The initial values of rows `ids` of `spec`: float32 (len(ids), dim)."""
    ids = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        row_keys = _splitmix64(ids + table_key(spec))
        keys = _splitmix64(row_keys[:, None] + np.arange(spec.dim, dtype=np.uint64)[None, :])
    uniform = (keys >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    values = (uniform * np.float32(2.0) - np.float32(1.0)) * np.float32(spec.init_scale)
    return torch.from_numpy(values.astype(np.float32, copy=False))
