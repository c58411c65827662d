"""Dense codecs: `none` (raw bytes, lossless) and the `fp16` / `bf16` casts."""

from __future__ import annotations

import torch

from paramserver.codecs.base import (
    CodecError,
    DenseUpdate,
    bytes_of,
    check_param_names,
    expect_nbytes,
)
from paramserver.types import CodecSpec


class Raw:
    """`none`: the tensor's own little-endian bytes. Lossless."""

    biased = False

    def __init__(self, spec: CodecSpec) -> None:
        check_param_names(spec, ())
        self.spec = CodecSpec("none")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return bytes_of(x)

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> DenseUpdate:
        expect_nbytes(payload, numel * dtype.itemsize, "none")
        return DenseUpdate(payload.view(dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return numel * dtype.itemsize


class Cast:
    """Send floating-point values in a 16-bit type; round to nearest, unbiased enough to
    need no error feedback (the rounding error is tiny and zero-mean in practice)."""

    biased = False

    def __init__(self, spec: CodecSpec, wire_dtype: torch.dtype) -> None:
        check_param_names(spec, ())
        self.spec = CodecSpec(spec.name)
        self.wire_dtype = wire_dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            raise CodecError(f"{self.spec.name} only encodes floating-point tensors, not {x.dtype}")
        return bytes_of(x.to(self.wire_dtype))

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> DenseUpdate:
        expect_nbytes(payload, numel * self.wire_dtype.itemsize, self.spec.name)
        return DenseUpdate(payload.view(self.wire_dtype).to(dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return numel * self.wire_dtype.itemsize


def fp16(spec: CodecSpec) -> Cast:
    return Cast(spec, torch.float16)


def bf16(spec: CodecSpec) -> Cast:
    return Cast(spec, torch.bfloat16)
