"""The single-process PyTorch reference for the CTR model (issue #16): no parameter server.

The same `CtrModel` with sparse table gradients, `torch.optim.SparseAdam` on the tables and
`torch.optim.Adam` on the dense part, trained on the same data in the same order as the
built-in trainer's worker of rank 0 of a one-worker job (`workers.data.epoch_batches` with
`epoch_seed`). A parameter-server job of W workers with per-worker batch B is compared with
this baseline at batch W * B for the same number of epochs (the same number of examples).

    python -m workers.ctr_baseline [--spec small] [--epochs 1] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workers.ctr_data import SPECS, CtrDataset, CtrSpec, load_ctr_dataset
from workers.ctr_model import auc, batch_tensors, ctr_model
from workers.data import epoch_batches, epoch_seed

# SparseAdam keeps two dense moments of every table: 3 x rows x dim x 4 bytes in all.
BASELINE_MAX_ROWS = 10_000_000


@dataclass(frozen=True)
class BaselineConfig:
    spec: CtrSpec = field(default_factory=CtrSpec)
    epochs: int = 1  # one pass: a second one overfits the tail ids seen once
    batch_size: int = 256
    dim: int = 16
    hidden: int = 64
    sparse_lr: float = 0.03  # SparseAdam on the tables
    dense_lr: float = 0.002  # Adam on the MLP and the dense projection
    seed: int = 0


@dataclass(frozen=True)
class BaselineReport:
    auc: float  # on the test set
    bayes_auc: float  # the true probabilities' AUC on the same test set
    examples: int  # training examples seen (epochs x train set)
    steps: int
    wall_s: float
    epoch_auc: list[float]


def train_baseline(config: BaselineConfig, data: CtrDataset | None = None) -> BaselineReport:
    """Train the reference model; `data` defaults to `load_ctr_dataset(config.spec)`."""
    data = data or load_ctr_dataset(config.spec)
    spec = data.spec
    if max(spec.table_rows) > BASELINE_MAX_ROWS:
        raise ValueError(f"a {max(spec.table_rows):,}-row table needs "
                         f"{3 * max(spec.table_rows) * config.dim * 4 / 2**30:.1f} GiB here "
                         "(the table and SparseAdam's two dense moments): the baseline takes "
                         f"at most {BASELINE_MAX_ROWS:,} rows per table")
    model = ctr_model(spec.table_rows, config.dim, spec.dense_features, config.hidden,
                      config.seed, sparse=True)
    tables = [p for n, p in model.named_parameters() if n.startswith("tables.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("tables.")]
    optimizers = [torch.optim.SparseAdam(tables, lr=config.sparse_lr),
                  torch.optim.Adam(rest, lr=config.dense_lr)]
    loss_fn = nn.BCEWithLogitsLoss()
    n = len(data.train)
    steps = -(-n // config.batch_size)
    started = time.perf_counter()
    epoch_auc = []
    for epoch in range(config.epochs):
        order = epoch_batches(np.arange(n), steps, config.batch_size,
                              epoch_seed(config.seed, epoch, 0))
        for batch in order:
            ids, dense, labels = batch_tensors(data.train.take(batch))
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss_fn(model(ids, dense), labels).backward()
            for optimizer in optimizers:
                optimizer.step()
        epoch_auc.append(auc(model, data.test))
    return BaselineReport(auc=epoch_auc[-1], bayes_auc=data.bayes_auc,
                          examples=config.epochs * n, steps=config.epochs * steps,
                          wall_s=time.perf_counter() - started, epoch_auc=epoch_auc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", choices=sorted(SPECS), default="small")
    parser.add_argument("--epochs", type=int, default=BaselineConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=BaselineConfig.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = BaselineConfig(spec=SPECS[args.spec], epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed)
    report = train_baseline(config)
    print(f"ctr baseline ({args.spec}, tables {config.spec.table_rows}): test AUC "
          f"{report.auc:.4f} (per epoch {[round(a, 4) for a in report.epoch_auc]}), Bayes AUC "
          f"{report.bayes_auc:.4f}, {report.examples} examples in {report.steps} steps, "
          f"{report.wall_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
