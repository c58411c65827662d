"""Embedding modules backed by row-sparse tables (issue #16): only a row cache on the worker.

`attach` finds the model's `nn.Embedding` / `nn.EmbeddingBag` modules declared with
`sparse=True` (or named in `tables=`), leaves their weight out of the dense model, and
replaces each one's `forward` (an instance attribute; the class is untouched):

    ids (any shape) -> unique ids u (sorted) and inverse positions    torch.unique
    rows = the servers' rows u, float32 (len(u), dim), a leaf that requires grad
    out  = F.embedding(inverse, rows) / F.embedding_bag(inverse, rows, offsets, ...)

so autograd leaves the gradient of exactly the touched rows in `rows.grad`. After backward
`step()` sums the row gradients of every call of the step per id and pushes them. The
module's own weight is never read: it may live on the meta device, so a table of any
declared size costs the worker nothing but the rows of the batch in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from paramserver.errors import InvalidArgument
from paramserver.tables import TableOptimizer, TablePlan, TableSpec
from workers.table_client import TableClient

EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def find_tables(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    """The model's table modules by name: those listed in `names`, or (None) every
    Embedding / EmbeddingBag with sparse=True."""
    modules = dict(model.named_modules())
    if names is None:
        return {n: m for n, m in modules.items() if isinstance(m, EMBEDDINGS) and m.sparse}
    missing = [n for n in names if not isinstance(modules.get(n), EMBEDDINGS)]
    if missing:
        raise InvalidArgument(f"tables= names {missing} are not nn.Embedding/EmbeddingBag "
                              "modules of the model")
    return {n: modules[n] for n in names}


def table_spec(name: str, module: nn.Module, optimizer: TableOptimizer, seed: int,
               init_scale: float) -> TableSpec:
    """The table behind `module`, refusing options a row cache cannot honour."""
    if module.max_norm is not None or module.scale_grad_by_freq:
        raise InvalidArgument(f"table {name!r}: max_norm and scale_grad_by_freq need the whole "
                              "table; they are not supported on a row-sparse table")
    rows, dim = module.weight.shape
    return TableSpec(name, int(rows), int(dim), optimizer=optimizer, init_seed=seed,
                     init_scale=init_scale)


class SparseEmbedding:
    """One table module's replacement forward and the rows of the step in flight."""

    def __init__(self, name: str, module: nn.Module, client: TableClient,
                 pushed: threading.Event) -> None:
        self.name = name
        self._pushed = pushed  # cleared while this step's rows are not pushed yet
        self.module = module
        self._client = client
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (unique ids, leaf)
        self._prefetched: tuple[torch.Tensor, Future[torch.Tensor]] | None = None
        self.prefetch_hits = 0  # forwards served by a prefetch
        module.forward = self.forward  # type: ignore[method-assign]

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        unique, inverse = torch.unique(input, sorted=True, return_inverse=True)
        rows = self._rows(unique).to(input.device)
        if self.module.training and torch.is_grad_enabled():
            rows.requires_grad_(True)
            self._pending.append((unique.cpu(), rows))
            self._pushed.clear()
        module: Any = self.module
        padding = _position(unique, module.padding_idx)
        if isinstance(module, nn.Embedding):
            return F.embedding(inverse, rows, padding_idx=padding)
        return F.embedding_bag(inverse, rows, offsets, mode=module.mode,
                               per_sample_weights=per_sample_weights,
                               include_last_offset=module.include_last_offset,
                               padding_idx=padding)

    def _rows(self, unique: torch.Tensor) -> torch.Tensor:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and torch.equal(prefetched[0], unique.cpu()):
            self.prefetch_hits += 1
            return prefetched[1].result()
        return self._client.pull(self.name, unique.cpu().numpy())

    def prefetch(self, input: torch.Tensor, pool: ThreadPoolExecutor,
                 ready: Callable[[], None]) -> None:
        """Start pulling the rows `input` needs; the next forward on the same ids uses them.
        `ready()` blocks until this step's rows were pushed (sync: the next version)."""
        unique = torch.unique(input.detach().cpu(), sorted=True)

        def pull() -> torch.Tensor:
            ready()
            return self._client.pull(self.name, unique.numpy())

        self._prefetched = (unique, pool.submit(pull))

    def gradient_rows(self) -> tuple[np.ndarray, torch.Tensor]:
        """This step's gradient rows, summed per id over every call: (unique ids, rows)."""
        pending, self._pending = self._pending, []
        used = [(ids, leaf.grad) for ids, leaf in pending if leaf.grad is not None]
        if not used:
            dim = int(self._client.specs[self.name].dim)
            return np.empty(0, dtype=np.int64), torch.empty((0, dim))
        if len(used) == 1:
            return used[0][0].numpy(), used[0][1].detach().cpu()
        ids = torch.cat([i for i, _ in used])
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        total = torch.zeros((len(unique), used[0][1].shape[1]))
        total.index_add_(0, inverse, torch.cat([g.detach().cpu() for _, g in used]))
        return unique.numpy(), total


def _position(unique: torch.Tensor, padding_idx: int | None) -> int | None:
    """Where the padding row sits among the batch's unique ids (None: absent)."""
    if padding_idx is None:
        return None
    hit = (unique == padding_idx).nonzero()
    return int(hit[0, 0]) if len(hit) else None


class AttachedTables:
    """The tables of an attached model: declared on attach, pushed by `step()`.

    `_pushed` is set while no step's rows are outstanding: a prefetch waits on it, so in
    sync mode it never reads the rows of the step still being pushed.
    """

    def __init__(self, modules: Mapping[str, nn.Module], client: TableClient) -> None:
        self.client = client
        self._pushed = threading.Event()
        self._pushed.set()
        self.embeddings = {n: SparseEmbedding(n, m, client, self._pushed)
                           for n, m in modules.items()}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ps-prefetch")
        self._timeout_s = max(c.timeout_s for c in client.connections)

    def push(self, drop: bool = False) -> None:
        """Push every table's gradient rows of this step (sync: every table, every shard).
        `drop`: the step found inf/NaN (GradScaler): push no rows (sync: empty pushes, so
        the step still closes)."""
        self._pushed.clear()
        try:
            rows = {name: embedding.gradient_rows() for name, embedding in self.embeddings.items()}
            if drop:
                rows = {name: (ids[:0], grads[:0]) for name, (ids, grads) in rows.items()}
            self.client.push_many(rows)
        finally:
            self._pushed.set()

    def prefetch(self, inputs: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(set(inputs) - set(self.embeddings))
        if unknown:
            raise InvalidArgument(f"prefetch: {unknown} are not tables; tables: "
                                  f"{sorted(self.embeddings)}")
        for name, input in inputs.items():
            self.embeddings[name].prefetch(input, self._pool, self._wait_pushed)

    def _wait_pushed(self) -> None:
        self._pushed.wait(self._timeout_s)

    def close(self) -> None:
        for embedding in self.embeddings.values():
            vars(embedding.module).pop("forward", None)
        self._pool.shutdown(wait=False)
        self.client.close()


def plan_for(modules: Mapping[str, nn.Module], num_shards: int, optimizer: str | TableOptimizer,
             seed: int, init_scale: float) -> TablePlan:
    rule = TableOptimizer.parse(optimizer) if isinstance(optimizer, str) else optimizer
    return TablePlan(num_shards, tuple(table_spec(n, m, rule, seed, init_scale)
                                       for n, m in modules.items()))


def dense_parameters(model: nn.Module, exclude: Collection[str]) -> dict[str, torch.Tensor]:
    """The model's parameters but the table weights in `exclude`."""
    return {n: p for n, p in model.named_parameters() if n not in exclude}


def excluded(modules: Mapping[str, Any]) -> set[str]:
    """The parameter names the dense path must leave alone: each table's weight."""
    return {f"{name}.weight" if name else "weight" for name in modules}


def open_tables(modules: Mapping[str, nn.Module], connections: Sequence[Any], sync: bool,
                optimizer: str | TableOptimizer, seed: int, init_scale: float,
                rejoin: Callable[[int, str], None] | None = None,
                codecs: Sequence[Any] = (),
                pull_codecs: Callable[[int], Any] | None = None) -> AttachedTables | None:
    """Declare `modules` as tables on the servers and take over their forward (None: the
    model has no tables)."""
    if not modules:
        return None
    plan = plan_for(modules, len(connections), optimizer, seed, init_scale)
    client = TableClient(connections, plan, sync, rejoin, codecs, pull_codecs)
    try:
        client.declare()
    except BaseException:
        client.close()
        raise
    return AttachedTables(modules, client)
