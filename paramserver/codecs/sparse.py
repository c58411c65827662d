"""Sparsifiers: `topk` and `randomk` share the payload code and differ in index choice.

topk payload:    count:int64 | values[count] (tensor dtype) | pad to 8 | indices[count]
randomk payload: seed:int64  | values[k] (tensor dtype)
Indices are int32 when the tensor has fewer than 2**31 elements, else int64. random-k
indices are regenerated from the seed on the server, so only the seed and values travel.
"""

from __future__ import annotations

import math

import torch

from paramserver.codecs.base import (
    CodecError,
    SparseUpdate,
    bytes_of,
    expect_nbytes,
    float_param,
    view_as,
)
from paramserver.types import CodecSpec

_HEADER = 8


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _ratio_and_k(spec: CodecSpec) -> tuple[float | None, int | None]:
    params = dict(spec.params)
    if "k" in params:
        k = int(float_param(spec, "k"))
        if k < 1:
            raise CodecError(f"{spec.name}: k must be at least 1, got {k}")
        return None, k
    ratio = float_param(spec, "ratio", 0.01)
    if not 0 < ratio <= 1:
        raise CodecError(f"{spec.name}: ratio must be in (0, 1], got {ratio}")
    return ratio, None


class _Sparsifier:
    """Shared k computation and payload validation."""

    biased: bool

    def __init__(self, spec: CodecSpec) -> None:
        self.ratio, self.fixed_k = _ratio_and_k(spec)

    def k_for(self, numel: int) -> int:
        if numel == 0:
            return 0
        if self.fixed_k is not None:
            return min(self.fixed_k, numel)
        return min(numel, max(1, math.ceil(self.ratio * numel)))  # type: ignore[operator]


class TopK(_Sparsifier):
    """The k largest magnitudes per tensor (biased: pair with error feedback).

    mode=exact runs torch.topk over the whole tensor. mode=approx estimates the threshold
    from a random sample (Lin et al. 2018, Deep Gradient Compression), keeps the elements
    above it, and runs an exact top-k only among those candidates: when at least k pass the
    threshold the result is still the exact top-k, otherwise fewer than k are sent.
    """

    biased = True
    SAMPLE = 20_000
    MARGIN = 1.5  # aim the threshold at MARGIN * k candidates so that usually >= k pass

    def __init__(self, spec: CodecSpec) -> None:
        super().__init__(spec)
        self.mode = dict(spec.params).get("mode", "exact")
        if self.mode not in ("exact", "approx"):
            raise CodecError(f"topk: mode must be exact or approx, got {self.mode!r}")
        size = f"k={self.fixed_k}" if self.fixed_k is not None else f"ratio={self.ratio:g}"
        self.spec = CodecSpec.parse(f"topk:{size},mode={self.mode}")
        self._generator: dict[torch.device, torch.Generator] = {}

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the elements to send."""
        k = self.k_for(x.numel())
        magnitude = x.abs()
        if self.mode == "exact" or x.numel() <= self.SAMPLE:
            return torch.topk(magnitude, k, sorted=False).indices
        generator = self._generator.setdefault(
            x.device, torch.Generator(device=x.device).manual_seed(0x5EED))
        sample = magnitude[torch.randint(0, x.numel(), (self.SAMPLE,), device=x.device,
                                         generator=generator)]
        keep = min(1.0, self.MARGIN * k / x.numel())
        threshold = torch.quantile(sample.float(), 1.0 - keep)
        candidates = torch.nonzero(magnitude >= threshold.to(magnitude.dtype)).view(-1)
        if candidates.numel() > k:
            best = torch.topk(magnitude[candidates], k, sorted=False).indices
            candidates = candidates[best]
        return candidates

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        indices = self.select(x)
        count = torch.tensor([indices.numel()], dtype=torch.int64, device=x.device)
        values = bytes_of(x[indices])
        pad = torch.zeros(_align8(_HEADER + values.numel()) - _HEADER - values.numel(),
                          dtype=torch.uint8, device=x.device)
        return torch.cat([bytes_of(count), values, pad,
                          bytes_of(indices.to(_index_dtype(x.numel())))])

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> SparseUpdate:
        if payload.numel() < _HEADER:
            raise CodecError(f"truncated stream: topk payload has {payload.numel()} bytes, "
                             f"less than its {_HEADER}-byte header")
        count = int(view_as(payload, 0, 1, torch.int64)[0])
        if not 0 <= count <= self.k_for(numel):
            raise CodecError(f"topk payload claims {count} values; at most "
                             f"{self.k_for(numel)} are allowed for {numel} elements")
        index_dtype = _index_dtype(numel)
        values_end = _HEADER + count * dtype.itemsize
        indices_at = _align8(values_end)
        expect_nbytes(payload, indices_at + count * index_dtype.itemsize, "topk")
        indices = view_as(payload, indices_at, count, index_dtype).to(torch.int64)
        if count and (int(indices.min()) < 0 or int(indices.max()) >= numel):
            raise CodecError(f"topk index out of range [0, {numel})")
        return SparseUpdate(indices, view_as(payload, _HEADER, count, dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        k = self.k_for(numel)
        return _align8(_HEADER + k * dtype.itemsize) + k * _index_dtype(numel).itemsize


class RandomK(_Sparsifier):
    """k coordinates drawn uniformly (with replacement) from a seed that travels instead of
    the indices; values are scaled by numel / k, so the estimate is unbiased."""

    biased = False

    def __init__(self, spec: CodecSpec) -> None:
        super().__init__(spec)
        size = f"k={self.fixed_k}" if self.fixed_k is not None else f"ratio={self.ratio:g}"
        self.spec = CodecSpec.parse(f"randomk:{size}")
        self._seeds = torch.Generator().manual_seed(int(float_param(spec, "seed", 12345)))

    @staticmethod
    def indices(seed: int, numel: int, k: int, device: torch.device) -> torch.Tensor:
        """The same indices on every machine and device: drawn on the CPU from `seed`."""
        if k == 0:
            return torch.empty(0, dtype=torch.int64, device=device)
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, numel, (k,), generator=generator).to(device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k_for(x.numel())
        seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        values = x[self.indices(seed, x.numel(), k, x.device)] * (x.numel() / max(k, 1))
        header = torch.tensor([seed], dtype=torch.int64, device=x.device)
        return torch.cat([bytes_of(header), bytes_of(values.to(x.dtype))])

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> SparseUpdate:
        k = self.k_for(numel)
        expect_nbytes(payload, _HEADER + k * dtype.itemsize, "randomk")
        seed = int(view_as(payload, 0, 1, torch.int64)[0])
        if seed < 0:
            raise CodecError(f"randomk seed must be non-negative, got {seed}")
        return SparseUpdate(self.indices(seed, numel, k, payload.device),
                            view_as(payload, _HEADER, k, dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return _HEADER + self.k_for(numel) * dtype.itemsize
