"""Records of row-sparse embedding tables (issue #16), shared by serde, server and workers.

A table is declared once per job (`TablePlan`): its rows are spread over the shards by row
id modulo the shard count (`shard_of`), each row lives on exactly one shard, and a row's
initial value depends only on (seed, table name, row id) (`paramserver.tables.init`), so a
table gives the same rows on 1, 2 or 4 shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from paramserver.errors import InvalidArgument
from paramserver.types import CodecSpec

TABLE_OPTIMIZERS = ("sgd", "adagrad", "adam")
SHARDING = "mod"  # row r lives on shard r % num_shards (docs/wire.md section 11)
MAX_TABLE_ROWS = 1 << 62  # row ids travel as int64
MAX_TABLE_DIM = 1 << 16
MAX_TABLES = 1024  # per job: a declaration is one message of at most 1 MiB


@dataclass(frozen=True)
class TableOptimizer:
    """A row-wise optimizer and its hyper-parameters (torch's names and defaults).

    sgd: w -= lr g. adagrad (torch.optim.Adagrad on a sparse gradient, lr_decay 0):
    s += g^2; w -= lr g / (sqrt(s) + eps), s starting at `initial_accumulator`. adam
    (torch.optim.SparseAdam): moments of a row move only when the row has a gradient; the
    bias correction uses the table's step count on this shard.
    """

    name: str = "sgd"
    lr: float = 0.01
    eps: float = 1e-10
    beta1: float = 0.9
    beta2: float = 0.999
    initial_accumulator: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in TABLE_OPTIMIZERS:
            raise InvalidArgument(f"table optimizer {self.name!r} unknown; known: "
                                  f"{', '.join(TABLE_OPTIMIZERS)}")
        values = (self.lr, self.eps, self.beta1, self.beta2, self.initial_accumulator)
        if not all(math.isfinite(v) for v in values) or self.lr < 0 or self.eps < 0 \
                or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) \
                or self.initial_accumulator < 0:
            raise InvalidArgument(f"table optimizer hyper-parameters out of range: {self}")

    @classmethod
    def parse(cls, text: str) -> TableOptimizer:
        """'adagrad:lr=0.05,eps=1e-8' -> TableOptimizer('adagrad', lr=0.05, eps=1e-8)."""
        name, _, rest = text.partition(":")
        params: dict[str, float] = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in ("lr", "eps", "beta1", "beta2", "initial_accumulator"):
                raise InvalidArgument(f"unknown table optimizer parameter {key!r} in {text!r}")
            params[key] = float(value)
        defaults = {"adam": {"eps": 1e-8, "lr": 0.001}}.get(name.strip(), {})
        return cls(name.strip(), **{**defaults, **params})

    def describe(self) -> str:
        if self.name == "sgd":
            return f"sgd(lr={self.lr:g})"
        if self.name == "adagrad":
            return (f"adagrad(lr={self.lr:g}, eps={self.eps:g}, "
                    f"initial_accumulator={self.initial_accumulator:g})")
        return f"adam(lr={self.lr:g}, betas=({self.beta1:g}, {self.beta2:g}), eps={self.eps:g})"


@dataclass(frozen=True)
class TableSpec:
    """One table: `rows` x `dim` values of `dtype` (float32 only today), its optimizer,
    and its initialiser: uniform in [-init_scale, init_scale), seeded by `init_seed`."""

    name: str
    rows: int
    dim: int
    dtype: torch.dtype = torch.float32
    optimizer: TableOptimizer = field(default_factory=TableOptimizer)
    init_seed: int = 0
    init_scale: float = 0.01

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 256:
            raise InvalidArgument("a table needs a name of 1 to 256 characters")
        if not 0 < self.rows <= MAX_TABLE_ROWS or not 0 < self.dim <= MAX_TABLE_DIM:
            raise InvalidArgument(f"table {self.name!r}: rows must be in [1, 2^62] and dim in "
                                  f"[1, {MAX_TABLE_DIM}], got {self.rows} x {self.dim}")
        if self.dtype != torch.float32:
            raise InvalidArgument(f"table {self.name!r}: only float32 tables are supported, "
                                  f"got {self.dtype}")
        if not (math.isfinite(self.init_scale) and self.init_scale >= 0) \
                or not 0 <= self.init_seed < 1 << 64:
            raise InvalidArgument(f"table {self.name!r}: init_scale must be finite and >= 0 "
                                  "and init_seed in [0, 2^64)")

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize


@dataclass(frozen=True)
class TablePlan:
    """The job's tables and how their rows are spread: row r on shard r % num_shards."""

    num_shards: int
    tables: tuple[TableSpec, ...]
    sharding: str = SHARDING

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise InvalidArgument(f"a table plan needs at least one shard, got "
                                  f"{self.num_shards}")
        if self.sharding != SHARDING:
            raise InvalidArgument(f"table sharding {self.sharding!r} unknown; known: "
                                  f"{SHARDING!r}")
        names = [t.name for t in self.tables]
        if not 0 < len(names) <= MAX_TABLES:
            raise InvalidArgument(f"a table plan holds 1 to {MAX_TABLES} tables, got "
                                  f"{len(names)}")
        if len(set(names)) != len(names):
            raise InvalidArgument(f"table names must be unique, got {names}")

    def by_name(self) -> dict[str, TableSpec]:
        return {t.name: t for t in self.tables}


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each row id (int64 array): id modulo the shard count."""
    return ids % num_shards


@dataclass(frozen=True)
class DeclareTables:
    """A worker declares the job's tables to one shard (the first declaration records
    them; later ones must match)."""

    session_id: str
    plan: TablePlan
    shard_index: int


@dataclass(frozen=True)
class RowPullRequest:
    """Rows `ids` (int64, unique) of `table`, once the table's version on this shard is
    at least `min_version`."""

    session_id: str
    table: str
    ids: np.ndarray
    min_version: int = 0


@dataclass(frozen=True)
class RowPullHeader:
    """Opens a row pull's answer: `rows` x `dim` values follow as the chunks of tensor 0,
    in the order the ids were asked for: raw values of `dtype`, or (`encoding`, e.g.
    qsgd:bits=8,bucket=dim) one payload of that codec decoding to `dtype`
    (`paramserver.tables.row_codec`)."""

    version: int
    table: str
    rows: int
    dim: int
    dtype: torch.dtype
    encoding: CodecSpec | None = None


@dataclass(frozen=True)
class RowPushHeader:
    """Opens a row push: chunks of tensor 0 carry `rows` unique int64 row ids, chunks of
    tensor 1 the `rows` x dim float32 gradient rows in the same order. `step`, incarnation
    and sequence as in a dense push (docs/wire.md section 11)."""

    session_id: str
    table: str
    step: int
    rows: int
    incarnation: int = 0
    sequence: int = 0
    num_samples: int = 1
    encoded: bool = False  # rows are one payload of the session's push codec (else raw)


@dataclass(frozen=True)
class TableStatus:
    """What `status` reports about one table on one shard."""

    name: str
    declared_rows: int
    dim: int
    materialized_rows: int  # rows of this shard touched so far
    bytes: int  # values and optimizer state of those rows, plus the index
    version: int  # updates applied to this table on this shard
    optimizer: str
