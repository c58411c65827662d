"""A synthetic click-through-rate data set drawn from a known model (issue #16).

Each example has one bag of ids per categorical feature (table), a few dense features and a
click label. The generating model is known, so the best achievable AUC is too:

- ids: rank r of table t is drawn from a truncated power law, P(r) ~ (r + 1)^-s (the
  continuous inverse-CDF approximation of Zipf, so no CDF table of N entries is built), then
  mapped to an id by a seeded bijection of [0, rows) (a 4-round Feistel network with cycle
  walking): hot ids are spread over the whole id space, and so over the shards of a table
  sharded by range or by hash;
- truth: every id has a ground-truth vector e(t, id) of `truth_dim` values, each a splitmix64
  hash of (seed, table, id, component) mapped to a uniform of unit variance. It is computed on
  demand, so a 100-million-row truth is never materialised;
- label: with a = e[0] (an id's own effect) and v = e[1:] (its interaction part), averaged
  over the bag,

      logit = bias + main * sum_t a_t + interaction * sum_{t<u} <v_t, v_u> / sqrt(dim - 1)
              + <w, x_dense>,        y ~ Bernoulli(sigmoid(logit)),

  and `bayes_auc` is the AUC of the true probabilities on the test set: no model can beat it
  there (in expectation), whatever it learns.

Examples are generated in blocks of BLOCK, each from its own seeded generator, so example i of
a split is the same whatever range is asked for, and memory is proportional to the examples
asked for, never to a table's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BLOCK = 8192  # examples per seeded block
TRAIN, TEST = 0, 1  # split codes in the block seeds
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FEISTEL_ROUNDS = 4


@dataclass(frozen=True)
class CtrSpec:
    """The generating model and the size of the data set."""

    table_rows: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    zipf: float = 1.2  # power-law exponent s of the id frequencies (> 0)
    bag_size: int = 1  # ids per table per example
    dense_features: int = 1  # 0: none
    truth_dim: int = 4  # a (1 value) + v (truth_dim - 1 values) per id
    bias: float = -1.0
    main: float = 0.8
    interaction: float = 0.8
    seed: int = 0
    train_examples: int = 300_000
    test_examples: int = 20_000

    def __post_init__(self) -> None:
        if not self.table_rows or min(self.table_rows) < 1:
            raise ValueError(f"every table needs at least one row, got {self.table_rows}")
        if max(self.table_rows) > 2**62:
            raise ValueError("tables are limited to 2**62 rows")
        if self.zipf <= 0 or self.bag_size < 1 or self.truth_dim < 2:
            raise ValueError("need zipf > 0, bag_size >= 1 and truth_dim >= 2")
        if self.dense_features < 0 or self.train_examples < 1 or self.test_examples < 2:
            raise ValueError("need dense_features >= 0, train and test examples")


# The configurations the trainer, the baseline and the benchmark name.
SPECS = {
    "small": CtrSpec(),
    "tiny": CtrSpec(table_rows=(100, 1_000, 10_000), train_examples=20_000,
                    test_examples=5_000),
    # A 100-million-row table: only usable through sparse tables (issue #16).
    "huge": CtrSpec(table_rows=(1_000, 100_000, 100_000_000)),
}


@dataclass(frozen=True)
class CtrBatch:
    """Examples `n` of a split; ids[:, t, :] index table t."""

    ids: np.ndarray  # (n, tables, bag_size) int64
    dense: np.ndarray  # (n, dense_features) float32
    labels: np.ndarray  # (n,) float32, 0 or 1
    probs: np.ndarray = field(repr=False)  # (n,) float64, the true click probability

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> CtrBatch:
        return CtrBatch(self.ids[index], self.dense[index], self.labels[index],
                        self.probs[index])


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        return x ^ (x >> np.uint64(31))


def _key(*parts: int) -> np.uint64:
    """A 64-bit key from small integers (seed, table, purpose)."""
    key = np.zeros(1, dtype=np.uint64)
    for part in parts:
        key = mix64(key ^ np.array([part], dtype=np.uint64))
    return np.uint64(key[0])


def zipf_ranks(u: np.ndarray, rows: int, s: float) -> np.ndarray:
    """Ranks in [0, rows) for uniforms `u` in [0, 1), P(rank r) ~ (r + 1)^-s: the inverse
    CDF of the power law on [1, rows + 1), floored (no table of `rows` entries)."""
    n1 = float(rows) + 1.0
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * math.log(n1))
    else:
        q = 1.0 - s
        x = np.power((n1 ** q - 1.0) * u + 1.0, 1.0 / q)
    return np.minimum(np.floor(x).astype(np.int64) - 1, rows - 1).clip(0)


def permute(ranks: np.ndarray, rows: int, key: np.uint64) -> np.ndarray:
    """A seeded bijection of [0, rows): a balanced Feistel network over the smallest even
    number of bits covering `rows`, cycle-walked until every value falls inside."""
    half = max(1, (max(rows - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    round_keys = [mix64(np.array([key + np.uint64(r)], dtype=np.uint64))[0]
                  for r in range(_FEISTEL_ROUNDS)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for k in round_keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        return (left << shift) | right

    out = encrypt(ranks.astype(np.uint64))
    outside = out >= np.uint64(rows)
    while outside.any():  # the domain is < 4 * rows: a few rounds at most, on few values
        out[outside] = encrypt(out[outside])
        outside = out >= np.uint64(rows)
    return out.astype(np.int64)


def truth(spec: CtrSpec, table: int, ids: np.ndarray) -> np.ndarray:
    """The ground-truth vectors of `ids` of `table`: (*ids.shape, truth_dim) float64, each
    value uniform with mean 0 and variance 1, from a hash of (seed, table, id, component)."""
    base = mix64(ids.astype(np.uint64) ^ _key(spec.seed, table, 1))
    components = np.arange(spec.truth_dim, dtype=np.uint64)
    bits = mix64(base[..., None] + components * _GOLDEN)
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return (uniform - 0.5) * math.sqrt(12.0)


def dense_weights(spec: CtrSpec) -> np.ndarray:
    return np.random.default_rng([spec.seed, 7]).normal(0.0, 0.5, spec.dense_features)


def true_logits(spec: CtrSpec, ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The generating model's logit of each example (see the module doc)."""
    per_table = [truth(spec, t, ids[:, t, :]).mean(axis=1) for t in range(ids.shape[1])]
    logit = np.full(len(ids), spec.bias)
    for e in per_table:
        logit += spec.main * e[:, 0]
    scale = spec.interaction / math.sqrt(spec.truth_dim - 1)
    for t, e_t in enumerate(per_table):
        for e_u in per_table[t + 1:]:
            logit += scale * np.einsum("nd,nd->n", e_t[:, 1:], e_u[:, 1:])
    return logit + dense @ dense_weights(spec)


def _block(spec: CtrSpec, split: int, index: int) -> CtrBatch:
    """Block `index` of `split`: BLOCK examples from their own seeded generator."""
    rng = np.random.default_rng([spec.seed, split, index])
    tables = len(spec.table_rows)
    u = rng.random((BLOCK, tables, spec.bag_size))
    ids = np.empty((BLOCK, tables, spec.bag_size), dtype=np.int64)
    for t, rows in enumerate(spec.table_rows):
        ranks = zipf_ranks(u[:, t, :], rows, spec.zipf)
        ids[:, t, :] = permute(ranks, rows, _key(spec.seed, t, 0))
    dense = rng.standard_normal((BLOCK, spec.dense_features))
    probs = 1.0 / (1.0 + np.exp(-true_logits(spec, ids, dense)))
    labels = (rng.random(BLOCK) < probs).astype(np.float32)
    return CtrBatch(ids, dense.astype(np.float32), labels, probs)


def examples(spec: CtrSpec, split: int, start: int, stop: int) -> CtrBatch:
    """Examples [start, stop) of `split` (TRAIN or TEST); the same whatever range."""
    if not 0 <= start <= stop:
        raise ValueError(f"bad range [{start}, {stop})")
    first, last = start // BLOCK, max(start // BLOCK, (stop - 1) // BLOCK)
    blocks = [_block(spec, split, b) for b in range(first, last + 1)]
    offset = start - first * BLOCK
    index = np.arange(offset, offset + stop - start)
    return CtrBatch(np.concatenate([b.ids for b in blocks])[index],
                    np.concatenate([b.dense for b in blocks])[index],
                    np.concatenate([b.labels for b in blocks])[index],
                    np.concatenate([b.probs for b in blocks])[index])


@dataclass(frozen=True)
class CtrDataset:
    """The train and test splits of `spec`, held in memory (examples, not tables)."""

    spec: CtrSpec
    train: CtrBatch
    test: CtrBatch

    @property
    def bayes_auc(self) -> float:
        """The AUC of the true probabilities on the test set: the best any model can do."""
        return auc_of(self.test.labels, self.test.probs)


def load_ctr_dataset(spec: CtrSpec) -> CtrDataset:
    return CtrDataset(spec, examples(spec, TRAIN, 0, spec.train_examples),
                      examples(spec, TEST, 0, spec.test_examples))


def auc_of(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for binary `labels` (scikit-learn's)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))
