"""The models the built-in trainer can train (`--model`): each with its data, loss and metric.

    digits  the 8x8 digits MLP, test accuracy
    ctr     the DLRM-like click-through-rate model on synthetic data, test AUC (issue #16)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from workers.ctr_data import SPECS, CtrSpec, load_ctr_dataset
from workers.ctr_model import EMBEDDING_STD, auc, batch_tensors, ctr_model
from workers.data import load_digits_dataset
from workers.models import accuracy, digits_mlp

MODELS = ("digits", "ctr")
CTR_DIM, CTR_HIDDEN = 16, 64

# Issue #16 switch: True serves the CTR tables as row-sparse tables (nn.EmbeddingBag with
# sparse=True on the meta device; the trainer attaches them through workers.embeddings).
# False sends them as dense tensors, pushed and pulled whole: gradients dense, and every
# table must fit in every worker's and server's memory (the only way before issue #16).
SPARSE_TABLES = True
DENSE_TABLE_MAX_ROWS = 2_000_000  # 128 MB at dim 16; larger ones need SPARSE_TABLES
# Rows start uniform in +-scale on the servers: the variance of the baseline's N(0, std).
TABLE_INIT_SCALE = EMBEDDING_STD * 3**0.5


class Task(Protocol):
    """A model with its training data, loss and test metric."""

    metric: str  # what `evaluate` returns: "accuracy" or "auc"
    model: nn.Module
    n_train: int

    def loss(self, batch: np.ndarray) -> torch.Tensor:
        """The mean loss of `model` on training examples `batch` (indices)."""
        ...

    def evaluate(self) -> float:
        """`metric` of `model` on the test set."""
        ...


class DigitsTask:
    metric = "accuracy"

    def __init__(self, hidden: int, seed: int) -> None:
        self.data = load_digits_dataset()
        self.model: nn.Module = digits_mlp(hidden, seed)
        self.n_train = len(self.data.x_train)
        self._loss = nn.CrossEntropyLoss()

    def loss(self, batch: np.ndarray) -> torch.Tensor:
        return self._loss(self.model(self.data.x_train[batch]), self.data.y_train[batch])

    def evaluate(self) -> float:
        return accuracy(self.model, self.data.x_test, self.data.y_test)


class CtrTask:
    metric = "auc"

    def __init__(self, spec: CtrSpec, seed: int) -> None:
        if not SPARSE_TABLES and max(spec.table_rows) > DENSE_TABLE_MAX_ROWS:
            raise ValueError(f"a table of {max(spec.table_rows):,} rows needs sparse "
                             "embedding tables (issue #16), which this build lacks; dense "
                             f"tables are limited to {DENSE_TABLE_MAX_ROWS:,} rows")
        self.data = load_ctr_dataset(spec)
        self.model: nn.Module = ctr_model(
            spec.table_rows, CTR_DIM, spec.dense_features, CTR_HIDDEN, seed,
            sparse=SPARSE_TABLES, embedding_device="meta" if SPARSE_TABLES else None)
        self.n_train = spec.train_examples
        self._loss = nn.BCEWithLogitsLoss()

    def loss(self, batch: np.ndarray) -> torch.Tensor:
        ids, dense, labels = batch_tensors(self.data.train.take(batch))
        return self._loss(self.model(ids, dense), labels)

    def evaluate(self) -> float:
        return auc(self.model, self.data.test)


def make_task(model: str, hidden: int = 128, seed: int = 0, ctr_spec: str = "tiny") -> Task:
    """The task `--model MODEL` names; `hidden` sizes the digits MLP, `ctr_spec` picks the
    CTR data set (`workers.ctr_data.SPECS`)."""
    if model == "digits":
        return DigitsTask(hidden, seed)
    if model == "ctr":
        if ctr_spec not in SPECS:
            raise ValueError(f"unknown CTR data set {ctr_spec!r}; choose from {sorted(SPECS)}")
        return CtrTask(SPECS[ctr_spec], seed)
    raise ValueError(f"unknown model {model!r}; choose from {MODELS}")


def train_examples(model: str, ctr_spec: str = "tiny") -> int:
    """The training-set size of `model`, without building anything."""
    if model == "ctr":
        return SPECS[ctr_spec].train_examples
    return len(load_digits_dataset().x_train)
