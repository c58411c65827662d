"""What every codec is: encode a flat tensor to bytes on its own device, decode it back.

Payloads are 1-D uint8 torch tensors so that encoding runs with torch operations wherever
the gradient lives (on a GPU worker, top-k runs before the device-to-host copy). Decoding
validates everything it reads and raises CodecError, which the server answers with
INVALID_ARGUMENT, changing nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from paramserver.types import CodecSpec


class CodecError(ValueError):
    """A payload that does not decode under the agreed codec, or a bad codec parameter."""


@dataclass(frozen=True)
class DenseUpdate:
    """Every element of the tensor (flat)."""

    values: torch.Tensor


@dataclass(frozen=True)
class SparseUpdate:
    """values[i] belongs at flat index indices[i]; repeated indices add up."""

    indices: torch.Tensor  # int64
    values: torch.Tensor


Update = DenseUpdate | SparseUpdate


class Codec(Protocol):
    """A configured codec. `spec` is its canonical name and parameters."""

    spec: CodecSpec
    biased: bool  # True when E[decode(encode(x))] != x; the worker then adds error feedback

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Flat tensor -> 1-D uint8 payload on the same device."""

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> Update:
        """1-D uint8 payload -> update for a flat tensor of `numel` elements of `dtype`."""

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """An upper bound on the payload size, used to refuse oversize streams early."""


def to_dense(update: Update, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The update as a dense flat tensor."""
    if isinstance(update, DenseUpdate):
        return update.values
    dense = torch.zeros(numel, dtype=dtype, device=update.values.device)
    return dense.index_add_(0, update.indices, update.values.to(dtype))


def add_into(target: torch.Tensor, update: Update, alpha: float = 1.0) -> None:
    """target += alpha * update, without densifying a sparse update."""
    if isinstance(update, DenseUpdate):
        target.add_(update.values.to(target.dtype), alpha=alpha)
    else:
        values = update.values.to(target.dtype)
        target.index_add_(0, update.indices, values if alpha == 1.0 else values * alpha)


def expect_nbytes(payload: torch.Tensor, expected: int, what: str) -> None:
    got = payload.numel()
    if got < expected:
        raise CodecError(f"truncated stream: {what} payload has {got} of {expected} bytes")
    if got > expected:
        raise CodecError(f"payload larger than declared: {what} needs {expected} bytes, "
                         f"got {got}")


def bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a 1-D uint8 view."""
    return t.contiguous().view(-1).view(torch.uint8)


def view_as(payload: torch.Tensor, start: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """`count` elements of `dtype` starting at byte `start` of a uint8 payload."""
    end = start + count * dtype.itemsize
    section = payload[start:end]
    if start % dtype.itemsize:  # reinterpreting needs an aligned start
        section = section.clone()
    return section.view(dtype)


def check_param_names(spec: CodecSpec, known: tuple[str, ...]) -> None:
    """Refuse parameters the codec does not have, naming the ones it has."""
    unknown = sorted(k for k, _ in spec.params if k not in known)
    if unknown:
        raise CodecError(f"codec {spec.name} has no parameter {', '.join(unknown)}; known: "
                         f"{', '.join(known) or 'none'}")


def float_param(spec: CodecSpec, key: str, default: float | None = None) -> float:
    """A finite number (NaN and infinities refused)."""
    raw = dict(spec.params).get(key)
    if raw is None:
        if default is None:
            raise CodecError(f"codec {spec.name} needs parameter {key}")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CodecError(f"codec {spec.name}: {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise CodecError(f"codec {spec.name}: {key}={raw!r} is not finite")
    return value


def int_param(spec: CodecSpec, key: str, default: int, low: int, high: int) -> int:
    """An integer in [low, high]; written as an integer or an integral float ("8", "8.0")."""
    raw = dict(spec.params).get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        number = float_param(spec, key)
        if not number.is_integer():
            raise CodecError(f"codec {spec.name}: {key}={raw!r} is not an integer") from None
        value = int(number)
    if not low <= value <= high:
        raise CodecError(f"codec {spec.name}: {key}={value} is outside [{low}, {high}]")
    return value
