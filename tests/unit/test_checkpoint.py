"""Checkpoints: bit-identical round trips, atomic saves, corrupt files skipped, crash mid-save."""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server import checkpoint
from paramserver.server.checkpoint import (
    CheckpointStore,
    ShardState,
)
from paramserver.server.store import ParameterStore, state_digest
from paramserver.sharding import plan_partition
from tests.helpers import layout_of

REPO = Path(__file__).resolve().parents[2]
EXTRA = {"dedup": {"worker-a": 7, "worker-b": 3}, "incarnations": [1, 2], "note": None}


def model() -> dict[str, torch.Tensor]:
    """Every dtype the wire carries, a scalar and an empty tensor."""
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=gen),
        "b": torch.randn(4, generator=gen, dtype=torch.float64),
        "h": torch.randn(2, 3, generator=gen).to(torch.float16),
        "e": torch.randn(5, generator=gen).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "n": torch.tensor([-1, 2**40], dtype=torch.int64),
        "s": torch.tensor(1.5),
        "z": torch.zeros(0),
    }


def make_state(version: int, params: dict[str, torch.Tensor] | None = None,
               optimizer: dict[str, Any] | None = None, shard_index: int = 0,
               num_shards: int = 1) -> ShardState:
    params = model() if params is None else params
    plan = plan_partition(layout_of(params), num_shards)
    layout = plan.shard_layout(shard_index)
    mine = {spec.name: params[spec.name].clone() for spec in layout.tensors}
    return ShardState(version, layout, plan, shard_index, mine, optimizer or {}, dict(EXTRA))


def raw(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert (got[name].dtype, got[name].shape) == (tensor.dtype, tensor.shape), name
        assert raw(got[name]) == raw(tensor), name  # bit-identical, NaN-safe


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    state = make_state(1200)
    store = CheckpointStore(tmp_path / "ckpt")
    path = store.save(state)
    assert path.name == "shard-0000-v000000001200.ckpt"
    restored = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert restored is not None
    assert (restored.version, restored.shard_index) == (1200, 0)
    assert (restored.layout, restored.plan) == (state.layout, state.plan)
    assert restored.extra == EXTRA
    assert_same_tensors(restored.params, state.params)
    assert state_digest(restored.version, restored.params) == state_digest(1200, state.params)


def _adam_steps(params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                steps: range) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        for param in params.values():
            param.grad = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        optimizer.step()


def test_restored_adam_continues_exactly_like_the_original(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(4, 3, generator=gen),
              "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    adam = torch.optim.Adam(params.values(), lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
    _adam_steps(params, adam, range(3))
    store = CheckpointStore(tmp_path)
    store.save(make_state(3, params, adam.state_dict()))

    restored = store.load_latest()
    assert restored is not None
    twin = torch.optim.Adam(restored.params.values(), lr=1.0)  # hyper-parameters come back too
    twin.load_state_dict(restored.optimizer)
    assert twin.state_dict()["param_groups"] == adam.state_dict()["param_groups"]
    _adam_steps(params, adam, range(3, 6))
    _adam_steps(restored.params, twin, range(3, 6))
    assert_same_tensors(restored.params, params)
    for mine, theirs in zip(params.values(), restored.params.values(), strict=True):
        assert adam.state[mine].keys() == twin.state[theirs].keys()
        for key, value in adam.state[mine].items():  # step, exp_avg, exp_avg_sq
            assert raw(twin.state[theirs][key]) == raw(value), key


def test_state_digest_equals_parameter_store_state_hash() -> None:
    params = model()
    layout = layout_of(params)
    store = ParameterStore(OptimizerConfig())
    store.create(layout, params, plan_partition(layout, 1), 0)
    assert state_digest(0, store.params) == store.state_hash()
    store.apply({name: torch.ones_like(p) for name, p in store.params.items()
                 if p.is_floating_point()})
    assert state_digest(1, store.params) == store.state_hash()


def test_state_digest_reads_views_by_value() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert state_digest(5, {"t": base.t()}) == state_digest(5, {"t": base.t().contiguous()})
    assert state_digest(5, {"t": base}) != state_digest(6, {"t": base})


def test_views_of_a_large_buffer_are_saved_compactly(tmp_path: Path) -> None:
    flat = torch.zeros(1_000_000)
    params = {"w": flat[10:22].view(3, 4)}
    path = CheckpointStore(tmp_path).save(make_state(1, params))
    assert path.stat().st_size < 100_000


def test_newest_version_wins(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for version in (900, 1200, 1000):
        store.save(make_state(version))
    assert [p.name for p in store.paths()] == [
        "shard-0000-v000000001200.ckpt", "shard-0000-v000000001000.ckpt",
        "shard-0000-v000000000900.ckpt"]
    restored = store.load_latest()
    assert restored is not None and restored.version == 1200


def _flip_payload_byte(data: bytes) -> bytes:
    return data[:-10] + bytes([data[-10] ^ 0x01]) + data[-9:]


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "flipped byte": (_flip_payload_byte, "checksum mismatch"),
    "truncated": (lambda data: data[: len(data) // 2], "torn or truncated"),
    "trailing bytes": (lambda data: data + b"x", "the header says"),
    "garbage": (lambda data: b"\x00garbage" * 100, "bad magic"),
    "empty": (lambda data: b"", "short file"),
    "header only, cut": (lambda data: data[:20], "short file"),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_newest_is_skipped_with_a_warning(tmp_path: Path, kind: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_state(1))
    newest = store.save(make_state(2))
    damage, reason = CORRUPTIONS[kind]
    newest.write_bytes(damage(newest.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="paramserver.server.checkpoint"):
        restored = store.load_latest()
    assert restored is not None and restored.version == 1
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert newest.name in record.getMessage() and reason in record.getMessage()


def test_verified_but_undecodable_payload_is_skipped(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_state(1))
    body = b"not a torch archive"
    header = checkpoint._HEADER.pack(checkpoint.MAGIC, checkpoint.FORMAT_VERSION, len(body),
                                     hashlib.sha256(body).digest())
    (tmp_path / "shard-0000-v000000000002.ckpt").write_bytes(header + body)
    with caplog.at_level(logging.WARNING, logger="paramserver.server.checkpoint"):
        restored = store.load_latest()
    assert restored is not None and restored.version == 1
    assert "unreadable payload" in caplog.text


def test_a_file_whose_name_disagrees_with_its_contents_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_state(1))
    store.save(make_state(2)).rename(tmp_path / "shard-0000-v000000000003.ckpt")
    with caplog.at_level(logging.WARNING, logger="paramserver.server.checkpoint"):
        restored = store.load_latest()
    assert restored is not None and restored.version == 1
    assert "not what its name says" in caplog.text


def test_all_corrupt_or_none_gives_none(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "new" / "dir")
    assert store.directory.is_dir() and store.load_latest() is None
    store.save(make_state(1)).write_bytes(b"junk")
    assert store.load_latest() is None


def test_leftover_temp_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    good = store.save(make_state(1))
    half = good.read_bytes()[:100]
    (tmp_path / "shard-0000-v000000000002.ckpt.abc123.tmp").write_bytes(half)
    (tmp_path / "shard-0000-v000000000003.ckpt.tmp").write_bytes(half)
    assert store.paths() == [good]
    with caplog.at_level(logging.WARNING):
        restored = store.load_latest()
    assert restored is not None and restored.version == 1
    assert not caplog.records


def test_keep_prunes_old_files(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for version in range(1, 6):
        store.save(make_state(version))
    assert [p.name for p in store.paths()] == [
        "shard-0000-v000000000005.ckpt", "shard-0000-v000000000004.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in store.paths())


def test_prune_spares_the_file_just_written_below_a_corrupt_newer_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.save(make_state(9)).write_bytes(b"junk")  # newest, unreadable
    written = store.save(make_state(5))  # resumed from an older state and saved again
    assert written.exists()
    restored = store.load_latest()
    assert restored is not None and restored.version == 5


def test_shards_sharing_a_directory(tmp_path: Path) -> None:
    big = {"a": torch.randn(1000), "b": torch.randn(1000)}
    for shard in (0, 1):
        for version in (1, 2):
            CheckpointStore(tmp_path, shard_index=shard).save(
                make_state(version, big, shard_index=shard, num_shards=2))
    with pytest.raises(ValueError, match="shards \\[0, 1\\]"):
        CheckpointStore(tmp_path).load_latest()
    for shard in (0, 1):
        store = CheckpointStore(tmp_path, keep=1, shard_index=shard)
        restored = store.load_latest()
        assert restored is not None and (restored.shard_index, restored.version) == (shard, 2)
        assert restored.layout == restored.plan.shard_layout(shard)
    store.save(make_state(3, big, shard_index=1, num_shards=2))  # prunes shard 1 only
    assert len(CheckpointStore(tmp_path, shard_index=0).paths()) == 2
    assert len(store.paths()) == 1
    with pytest.raises(ValueError, match="holds shard 1"):
        store.save(make_state(4, big, shard_index=0, num_shards=2))


def test_save_refuses_what_could_not_be_restored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    state = make_state(1)
    state.params["w"] = state.params["w"].double()
    with pytest.raises(ValueError, match="'w'"):
        store.save(state)
    state = make_state(1)
    del state.params["w"]
    with pytest.raises(ValueError, match="do not match"):
        store.save(state)
    state = make_state(1)
    state.extra = {"not json": object()}
    with pytest.raises(TypeError):
        store.save(state)
    assert list(tmp_path.iterdir()) == []


CHILD = """
import sys
from pathlib import Path
from paramserver.server.checkpoint import CheckpointStore
from tests.server_faults import crash_on_save
from tests.unit.test_checkpoint import make_state
store = CheckpointStore(Path(sys.argv[1]), before_write=crash_on_save(2))
store.save(make_state(1))
print("first saved", flush=True)
store.save(make_state(2))
print("second saved: the hook did not fire", flush=True)
"""


def test_crash_while_saving_resumes_from_the_previous_checkpoint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == "first saved\n"
    [torn] = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert torn.name.startswith("shard-0000-v000000000002.ckpt.") and torn.stat().st_size > 0

    store = CheckpointStore(tmp_path)
    assert [p.name for p in store.paths()] == ["shard-0000-v000000000001.ckpt"]
    with caplog.at_level(logging.WARNING):
        restored = store.load_latest()
    assert restored is not None and restored.version == 1
    assert_same_tensors(restored.params, make_state(1).params)
    assert not caplog.records
