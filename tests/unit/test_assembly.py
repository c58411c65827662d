"""Stream reassembly refuses anything that is not exactly the declared tensors."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.errors import InvalidArgument, NotFound, ParamServerError
from paramserver.server.assembly import TensorAssembler, check_specs
from paramserver.server.buffers import BufferPool, PooledBuffers
from paramserver.types import TensorSpec
from paramserver.wire import Chunk

W = TensorSpec("w", (4, 3), torch.float32)
B = TensorSpec("b", (3,), torch.float64)


def _chunks(index: int, tensor: torch.Tensor, size: int) -> list[Chunk]:
    raw = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    return [Chunk(index, i, raw[i:i + size]) for i in range(0, raw.nbytes, size)]


def test_interleaved_chunks_reassemble_exactly() -> None:
    w, b = torch.randn(4, 3), torch.randn(3, dtype=torch.float64)
    assembler = TensorAssembler([W, B], PooledBuffers(BufferPool()))
    for cw, cb in zip(_chunks(0, w, 7), _chunks(1, b, 5) + [None] * 10):  # type: ignore[operator]
        assembler.add(cw)
        if cb is not None:
            assembler.add(cb)
    out = assembler.finish()
    assert torch.equal(out["w"].view(4, 3), w) and torch.equal(out["b"], b)


@pytest.mark.parametrize("mutate, match", [
    (lambda cs: cs[:-1], "truncated stream"),
    (lambda cs: cs + [Chunk(0, 48, memoryview(b"x"))], "larger than declared"),
    (lambda cs: [cs[1], cs[0], *cs[2:]], "expected 0"),
    (lambda cs: cs + [Chunk(5, 0, memoryview(b"x"))], "tensor index 5"),
])
def test_bad_streams_are_invalid_argument(mutate, match) -> None:  # type: ignore[no-untyped-def]
    assembler = TensorAssembler([W])
    with pytest.raises(InvalidArgument, match=match):
        for chunk in mutate(_chunks(0, torch.randn(4, 3), 16)):
            assembler.add(chunk)
        assembler.finish()


def test_check_specs_codes() -> None:
    registered = {"w": W, "b": B}
    check_specs([W], registered)
    cases = [
        ([TensorSpec("nope", (1,), torch.float32)], NotFound, "unknown tensor"),
        ([TensorSpec("w", (3, 4), torch.float32)], InvalidArgument, "shape"),
        ([TensorSpec("w", (4, 3), torch.float16)], InvalidArgument, "dtype"),
        ([W, W], InvalidArgument, "twice"),
    ]
    for specs, error, match in cases:
        with pytest.raises(error, match=match) as info:
            check_specs(specs, registered)
        assert isinstance(info.value, ParamServerError)
        assert info.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_pool_recycles_buffers() -> None:
    pool = BufferPool()
    first = pool.take(48)
    pool.give(first)
    assert pool.take(48) is first
    assert pool.take(48) is not first
    with pytest.raises(ValueError, match="uint8"):
        pool.give(torch.empty(12))


def test_pooled_buffers_release_what_they_still_own_on_exit() -> None:
    pool = BufferPool()
    adopted = PooledBuffers(pool)
    with PooledBuffers(pool) as owned:
        kept, moved = owned.take(8), owned.take(16)
        owned.adopt(moved, into=adopted)
        assert owned.owner_of(kept.view(torch.float32)) is kept and len(owned) == 1
    assert pool.take(8) is kept  # released on exit
    assert pool.take(16) is not moved  # still owned by `adopted`
    adopted.release()
    assert pool.take(16) is moved
