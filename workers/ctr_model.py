"""A DLRM-like click-through-rate model (issue #16): embedding tables, dot interactions, MLP.

One `nn.EmbeddingBag(rows, dim, mode="sum")` per categorical feature, a linear projection of
the dense features to the same width, the pairwise dot products of all those vectors (DLRM's
interaction, Naumov et al. 2019), and an MLP from [vectors, dots] to one logit.

`sparse=True` makes the tables' gradients sparse (only the rows a batch touched), which
`torch.optim.SparseAdam` needs and the parameter server's row-sparse tables serve; with
`sparse=False` they are dense tensors any optimizer (and today's dense push) takes.
`embedding_device="meta"` declares the tables without allocating them: a 100-million-row
table costs nothing until something serves its rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.ctr_data import CtrBatch, auc_of
from workers.models import reset_linear

EMBEDDING_STD = 0.05  # initial N(0, std) of table rows: small, so dots start near 0


class CtrModel(nn.Module):
    """forward(ids (B, tables, bag) int64, dense (B, dense_features)) -> logits (B,)."""

    _upper: torch.Tensor  # (2, pairs): the (i, j), i < j, of the interaction's dot products

    def __init__(self, table_rows: tuple[int, ...], dim: int = 16, dense_features: int = 1,
                 hidden: int = 64, sparse: bool = True,
                 embedding_device: str | torch.device | None = None, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        with torch.device("meta"):  # shapes only: values come from `generator` below
            tables = [nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse)
                      for rows in table_rows]
            dense = nn.Linear(dense_features, dim) if dense_features else None
            vectors = len(table_rows) + (1 if dense_features else 0)
            pairs = vectors * (vectors - 1) // 2
            top = nn.Sequential(nn.Linear(vectors * dim + pairs, hidden), nn.ReLU(),
                                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.tables = nn.ModuleList(tables)  # registration order = parameter order on the wire
        self.dense = dense
        self.top = top
        if embedding_device is None or torch.device(embedding_device).type != "meta":
            for table in tables:  # EmbeddingBag's own N(0, 1) draws come first...
                table.to_empty(device=embedding_device or "cpu")
                table.weight.detach().normal_(generator=generator)
            for table in tables:  # ...then ours
                table.weight.detach().normal_(std=EMBEDDING_STD, generator=generator)
        for layer in [self.dense, *self.top]:
            if isinstance(layer, nn.Linear):
                layer.to_empty(device="cpu")
                reset_linear(layer, generator)
        self.register_buffer("_upper", torch.triu_indices(vectors, vectors, offset=1),
                             persistent=False)

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        vectors = [table(ids[:, t, :]) for t, table in enumerate(self.tables)]  # (B, dim) each
        if self.dense is not None:
            vectors.append(self.dense(dense))
        stacked = torch.stack(vectors, dim=1)  # (B, V, dim)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))  # (B, V, V)
        pairs = dots[:, self._upper[0], self._upper[1]]  # (B, V(V-1)/2)
        return self.top(torch.cat([stacked.flatten(1), pairs], dim=1)).squeeze(1)


def ctr_model(table_rows: tuple[int, ...], dim: int = 16, dense_features: int = 1,
              hidden: int = 64, seed: int = 0, sparse: bool = True,
              embedding_device: str | torch.device | None = None) -> CtrModel:
    """A `CtrModel` initialised deterministically from `seed`.

    Thread-safe: the values come from a private generator (as `workers.models.digits_mlp`'s
    do), never from torch's process-wide one, in the order `torch.manual_seed(seed)` then
    the default construction would draw them.
    """
    return CtrModel(table_rows, dim, dense_features, hidden, sparse, embedding_device, seed)


def batch_tensors(batch: CtrBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, dense, labels) of `batch` as tensors (no copy where numpy allows)."""
    return (torch.from_numpy(batch.ids), torch.from_numpy(batch.dense),
            torch.from_numpy(batch.labels))


@torch.no_grad()
def predict(model: nn.Module, batch: CtrBatch, chunk: int = 8192) -> np.ndarray:
    """Click probabilities of `batch` (evaluation mode, in chunks)."""
    was_training = model.training
    model.eval()
    try:
        ids, dense, _ = batch_tensors(batch)
        out = [torch.sigmoid(model(ids[i:i + chunk], dense[i:i + chunk]))
               for i in range(0, len(batch), chunk)]
        return torch.cat(out).double().numpy()
    finally:
        model.train(was_training)


def auc(model: nn.Module, batch: CtrBatch) -> float:
    """Test ROC AUC of `model` on `batch`."""
    return auc_of(batch.labels, predict(model, batch))
