"""Checkpoints against a hostile directory (issue #13): stray entries under checkpoint
names never crash or block start-up, and a keyed store refuses forged checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from paramserver.server.checkpoint import CheckpointStore, ShardState, checkpoint_name
from paramserver.sharding import plan_partition
from paramserver.types import ModelLayout, TensorSpec

KEY = b"0123456789abcdef-secret"


def _state(version: int) -> ShardState:
    layout = ModelLayout((TensorSpec("w", (3,), torch.float32),))
    return ShardState(version, layout, plan_partition(layout, 1), 0,
                      {"w": torch.full((3,), float(version))}, {"state": {}, "param_groups": []},
                      {})


def test_stray_entries_under_checkpoint_names_are_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_state(1))
    (tmp_path / checkpoint_name(0, 5)).mkdir()  # a directory
    os.mkfifo(tmp_path / checkpoint_name(0, 4))  # would block a plain open() forever
    (tmp_path / checkpoint_name(0, 3)).write_bytes(b"garbage")  # a mismatched file
    loaded = store.load_latest()
    assert loaded is not None and loaded.version == 1
    store.save(_state(2))  # pruning steps around the strays too
    assert store.load_latest().version == 2  # type: ignore[union-attr]


def test_a_keyed_store_refuses_unsigned_forged_and_other_key_checkpoints(
        tmp_path: Path) -> None:
    CheckpointStore(tmp_path).save(_state(1))  # unsigned
    keyed = CheckpointStore(tmp_path, key=KEY)
    assert keyed.load_latest() is None
    path = keyed.save(_state(2))
    assert keyed.load_latest().version == 2  # type: ignore[union-attr]
    assert CheckpointStore(tmp_path, key=b"another key of 16+ bytes").load_latest() is None
    assert CheckpointStore(tmp_path).load_latest().version == 1  # type: ignore[union-attr]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # tamper with the payload
    path.write_bytes(bytes(data))
    assert keyed.load_latest() is None


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CheckpointStore(tmp_path, key=b"short")


def test_a_stray_file_named_for_another_shard_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_state(1))
    (tmp_path / checkpoint_name(1, 9)).write_bytes(b"not a checkpoint")
    assert store.load_latest().version == 1  # type: ignore[union-attr]
    other = _state(2)
    other.shard_index = 1  # a real checkpoint of another shard: refuse to guess
    CheckpointStore(tmp_path, shard_index=1).save(other)
    with pytest.raises(ValueError, match="checkpoints of shards \\[0, 1\\]"):
        store.load_latest()
