"""One table's rows on one shard: a sorted index, growing row storage, row-wise optimizers.

Only touched rows exist. `_keys` holds the materialised row ids in ascending order and
`_slots` each one's row in `values` (and in the optimizer state tensors), so a lookup is a
binary search over a batch of ids (`np.searchsorted`), and materialising m new rows is one
O(n + m) merge. Storage grows by half its size when full, so capacity stays within 1.5x of
the rows in it. Memory per materialised row, at most (docs/wire.md section 11):

    1.5 x dim x 4 x (1 + S) bytes  +  28 bytes of index (key, slot; 1.5 x the id by slot)
    S = 0 (sgd), 1 (adagrad: the squared-gradient sum), 2 (adam: both moments)

A row read before anything was pushed to it is served from the initialiser and not stored;
the first push to a row materialises it (value from `initial_rows`, state from zero, or
`initial_accumulator` for adagrad) and then updates it.

The optimizers reproduce torch's sparse-gradient rules on the rows of one update (`apply`):
torch.optim.SGD (no momentum), torch.optim.Adagrad (lr_decay 0, no weight decay) and
torch.optim.SparseAdam, whose step count (bias correction) is the table's update count.
Not thread-safe: `TableService` calls it under its lock.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch

from paramserver.tables import TableSpec, initial_rows

_STATES = {"sgd": (), "adagrad": ("sum",), "adam": ("exp_avg", "exp_avg_sq")}


class RowTable:
    """The materialised rows of one table on one shard, and their optimizer state."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self._keys = np.empty(0, dtype=np.int64)  # materialised ids, ascending
        self._slots = np.empty(0, dtype=np.int64)  # the storage row of each key
        self._ids = np.empty(0, dtype=np.int64)  # the id of each storage row
        self.values = torch.empty((0, spec.dim), dtype=torch.float32)
        self.state = {name: torch.empty((0, spec.dim)) for name in _STATES[spec.optimizer.name]}
        self.count = 0  # materialised rows
        self.version = 0  # updates applied (the optimizer's step count)

    # ---- reading -------------------------------------------------------------------------

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, slots of the found ids) for an int64 id array."""
        if self.count == 0:
            return np.zeros(len(ids), dtype=bool), np.empty(0, dtype=np.int64)
        pos = np.searchsorted(self._keys, ids)
        pos_clipped = np.minimum(pos, self.count - 1)
        found = self._keys[pos_clipped] == ids
        return found, self._slots[pos_clipped[found]]

    def read(self, ids: np.ndarray) -> torch.Tensor:
        """Rows `ids` (float32, (len(ids), dim)): stored rows as they are, the others as the
        initialiser makes them (without storing them)."""
        found, slots = self._find(ids)
        if found.all():
            return self.values[torch.from_numpy(slots)]
        rows = initial_rows(self.spec, ids)
        if found.any():
            rows[torch.from_numpy(found)] = self.values[torch.from_numpy(slots)]
        return rows

    # ---- updating ------------------------------------------------------------------------

    def _materialise(self, ids: np.ndarray) -> np.ndarray:
        """The slots of `ids` (unique), storing the missing rows first."""
        found, _ = self._find(ids)
        new = np.sort(ids[~found])
        if len(new):
            self._grow(self.count + len(new))
            slots = np.arange(self.count, self.count + len(new), dtype=np.int64)
            index = torch.from_numpy(slots)
            self.values[index] = initial_rows(self.spec, new)
            for name, tensor in self.state.items():
                tensor[index] = (self.spec.optimizer.initial_accumulator if name == "sum"
                                 else 0.0)
            at = np.searchsorted(self._keys, new)
            self._keys = np.insert(self._keys, at, new)
            self._slots = np.insert(self._slots, at, slots)
            self._ids[slots] = new
            self.count += len(new)
        found, slots = self._find(ids)
        assert found.all()
        return slots

    def _grow(self, needed: int) -> None:
        capacity = self.values.shape[0]
        if needed <= capacity:
            return
        capacity = max(needed, capacity + capacity // 2, 64)
        self.values = _resized(self.values, capacity)
        self.state = {name: _resized(t, capacity) for name, t in self.state.items()}
        ids = np.empty(capacity, dtype=np.int64)
        ids[:self.count] = self._ids[:self.count]
        self._ids = ids

    def apply(self, ids: np.ndarray, grads: torch.Tensor) -> None:
        """One optimizer step on rows `ids` (unique, in range) with gradient rows `grads`
        ((len(ids), dim) float32); counts as one step even when `ids` is empty."""
        self.version += 1
        if len(ids) == 0:
            return
        index = torch.from_numpy(self._materialise(ids))
        opt = self.spec.optimizer
        if opt.name == "sgd":
            self.values[index] = self.values[index] - opt.lr * grads
        elif opt.name == "adagrad":
            total = self.state["sum"][index] + grads * grads
            self.state["sum"][index] = total
            self.values[index] = self.values[index] - opt.lr * (grads / (total.sqrt() + opt.eps))
        else:
            self._adam(index, grads)

    def _adam(self, index: torch.Tensor, grads: torch.Tensor) -> None:
        """torch.optim.SparseAdam's update, operation for operation (torch/optim/sparse_adam.py)."""
        opt = self.spec.optimizer
        old_m = self.state["exp_avg"][index]
        update_m = (grads - old_m) * (1 - opt.beta1)
        self.state["exp_avg"][index] = old_m + update_m
        old_v = self.state["exp_avg_sq"][index]
        update_v = (grads.pow(2) - old_v) * (1 - opt.beta2)
        self.state["exp_avg_sq"][index] = old_v + update_v
        numer = update_m + old_m
        denom = (update_v + old_v).sqrt() + opt.eps
        correction1 = 1 - opt.beta1 ** self.version
        correction2 = 1 - opt.beta2 ** self.version
        step_size = opt.lr * math.sqrt(correction2) / correction1
        self.values[index] = self.values[index] + (-step_size) * (numer / denom)

    # ---- reporting, checkpoints ----------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held: row storage and optimizer state (allocated), and the index."""
        held = self.values.nbytes + sum(t.nbytes for t in self.state.values())
        return held + self._keys.nbytes + self._slots.nbytes + self._ids.nbytes

    def snapshot(self) -> dict[str, Any]:
        """Rows and state in ascending id order (copies), for checkpoints."""
        index = torch.from_numpy(self._slots.copy())
        return {"version": self.version, "ids": torch.from_numpy(self._keys.copy()),
                "values": self.values[index].clone(),
                "state": {name: t[index].clone() for name, t in self.state.items()}}

    def restore(self, saved: dict[str, Any]) -> None:
        ids = saved["ids"].numpy().astype(np.int64)
        if len(ids) and (np.any(np.diff(ids) <= 0) or ids[0] < 0
                         or ids[-1] >= self.spec.rows):
            raise ValueError(f"table {self.spec.name!r}: saved ids are not ascending in range")
        values = saved["values"].to(torch.float32).reshape(len(ids), self.spec.dim)
        if set(saved["state"]) != set(self.state):
            raise ValueError(f"table {self.spec.name!r}: saved optimizer state "
                             f"{sorted(saved['state'])}, expected {sorted(self.state)}")
        self.count = len(ids)
        self._keys, self._slots = ids.copy(), np.arange(len(ids), dtype=np.int64)
        self._ids = ids.copy()
        self.values = values.clone()
        self.state = {name: t.to(torch.float32).reshape(len(ids), self.spec.dim).clone()
                      for name, t in saved["state"].items()}
        self.version = int(saved["version"])

    def digest(self) -> str:
        """SHA-256 over version, ids, rows and state in id order (tests: nothing changed)."""
        saved = self.snapshot()
        digest = hashlib.sha256(f"{self.spec.name}:{self.version}".encode())
        for tensor in (saved["ids"], saved["values"], *saved["state"].values()):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()


def _resized(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
    grown = torch.empty((capacity, tensor.shape[1]), dtype=tensor.dtype)
    grown[:tensor.shape[0]] = tensor
    return grown
