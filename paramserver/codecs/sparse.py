"""Sparsifiers: `topk` and `randomk` share the payload code and differ in index choice.

topk payload:    count:int64 | values[count] (tensor dtype) | pad to 8 | indices[count]
randomk payload: seed:int64  | values[k] (tensor dtype)
All little-endian. Indices are int32 when the tensor has fewer than 2**31 elements, else
int64; top-k sends them in ascending order. random-k indices are regenerated from the seed
on the server with the specified SplitMix64 generator (`splitmix.py`), so only the seed
and values travel. Byte-exact definitions: docs/wire.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from paramserver.codecs import splitmix
from paramserver.codecs.base import (
    CodecError,
    SparseUpdate,
    bytes_of,
    check_param_names,
    expect_nbytes,
    float_param,
    int_param,
    view_as,
)
from paramserver.types import CodecSpec

_HEADER = 8


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


MAX_K = 1 << 62


def _ratio_and_k(spec: CodecSpec) -> tuple[float | None, int | None]:
    params = dict(spec.params)
    if "k" in params:
        k = int(float_param(spec, "k"))  # int(float(K)), as docs/wire.md section 1 says
        if not 1 <= k <= MAX_K:
            raise CodecError(f"{spec.name}: k must be in [1, 2**62], got {k}")
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

    min_k = 1  # top-k's `min_k` parameter raises it

    def k_for(self, numel: int) -> int:
        if numel == 0:
            return 0
        if self.fixed_k is not None:
            return min(self.fixed_k, numel)
        return min(numel, max(self.min_k, math.ceil(self.ratio * numel)))  # type: ignore[operator]


class TopK(_Sparsifier):
    """The k largest magnitudes per tensor (biased: pair with error feedback).

    mode=approx (the default) estimates the threshold from a random sample (Lin et al. 2018,
    Deep Gradient Compression), keeps the elements at or above it, and then the k largest of
    those candidates, ties at the k-th magnitude broken towards the lowest index; when fewer
    than k pass it falls back to the full selection. It sends exactly k, the same set as
    mode=exact (ties aside), in one cached pass over the tensor instead of a full selection,
    except that it never sends zeros: a tensor with fewer than k nonzeros sends them all.
    mode=exact runs torch.topk over the whole tensor.
    """

    biased = True
    SAMPLE = 20_000
    MARGIN = 1.5  # aim the threshold at MARGIN * k candidates so that usually >= k pass
    CHUNK = 1 << 18  # elements per pass of the CPU candidate scan

    def __init__(self, spec: CodecSpec) -> None:
        check_param_names(spec, ("k", "min_k", "mode", "ratio"))
        super().__init__(spec)
        self.mode = dict(spec.params).get("mode", "approx")
        if self.mode not in ("exact", "approx"):
            raise CodecError(f"topk: mode must be exact or approx, got {self.mode!r}")
        # min_k (issue #14): a ratio's k is raised to min(numel, min_k), so small tensors
        # (biases) go whole; a pull codec wants it (docs/wire.md, compressed pulls).
        self.min_k = int_param(spec, "min_k", 1, 1, MAX_K)
        size = f"k={self.fixed_k}" if self.fixed_k is not None else f"ratio={self.ratio:g}"
        floor = f",min_k={self.min_k}" if self.min_k > 1 and self.fixed_k is None else ""
        self.spec = CodecSpec.parse(f"topk:{size},mode={self.mode}{floor}")
        self._generator: dict[torch.device, torch.Generator] = {}
        self._rng = np.random.Generator(np.random.PCG64(0x5EED))
        self.fallbacks = 0  # approx selections that fell back to the full one (for tests)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the elements to send, in ascending order."""
        k = self.k_for(x.numel())
        if self.mode == "approx" and x.numel() > self.SAMPLE:
            if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64,
                                                        torch.float16):
                chosen = self._select_cpu(x.detach().reshape(-1).numpy(), k)
            else:
                chosen = self._select_torch(x.reshape(-1), k)
            if chosen is not None:
                return chosen
            self.fallbacks += 1
        return torch.topk(x.reshape(-1).abs(), k, sorted=False).indices.sort().values

    def _select_cpu(self, flat: np.ndarray, k: int) -> torch.Tensor | None:
        sample = np.abs(flat[self._rng.integers(0, flat.size, self.SAMPLE)])
        threshold = np.quantile(sample.astype(np.float64),
                                1.0 - min(1.0, self.MARGIN * k / flat.size))
        threshold = flat.dtype.type(threshold)
        # A mostly-zero tensor (a pull's delta, a sparse gradient) samples a zero threshold:
        # then the candidates are the nonzeros, and when fewer than k, all of them are sent.
        above = np.greater_equal if threshold > 0 else np.greater
        buf = np.empty(min(self.CHUNK, flat.size), dtype=flat.dtype)
        mask = np.empty(buf.size, dtype=bool)
        found = []
        for start in range(0, flat.size, self.CHUNK):
            piece = flat[start:start + self.CHUNK]
            n = piece.size
            np.abs(piece, out=buf[:n])
            above(buf[:n], threshold, out=mask[:n])
            found.append(np.flatnonzero(mask[:n]) + start)
        candidates = np.concatenate(found)
        if candidates.size < k:
            return torch.from_numpy(candidates) if threshold <= 0 else None
        if candidates.size > k:
            candidates = _k_largest(candidates, np.abs(flat[candidates]), k)
        return torch.from_numpy(candidates)

    def _select_torch(self, flat: torch.Tensor, k: int) -> torch.Tensor | None:
        generator = self._generator.setdefault(
            flat.device, torch.Generator(device=flat.device).manual_seed(0x5EED))
        magnitude = flat.abs()
        sample = magnitude[torch.randint(0, flat.numel(), (self.SAMPLE,), device=flat.device,
                                         generator=generator)]
        keep = min(1.0, self.MARGIN * k / flat.numel())
        threshold = torch.quantile(sample.float(), 1.0 - keep).to(magnitude.dtype)
        zero = bool(threshold <= 0)  # as the CPU path: then the nonzeros, at most k of them
        candidates = torch.nonzero(magnitude > threshold if zero else magnitude >= threshold
                                   ).view(-1)
        if candidates.numel() < k:
            return candidates if zero else None
        if candidates.numel() > k:
            best = torch.topk(magnitude[candidates], k, sorted=False).indices
            candidates = candidates[best.sort().values]
        return candidates

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # Ascending index order makes the payload canonical (torch.topk's unsorted order is
        # unspecified, ties aside) and the server's index_add_ cache-friendly.
        indices = self.select(x).to(x.device)
        count = torch.tensor([indices.numel()], dtype=torch.int64, device=x.device)
        values = bytes_of(x.reshape(-1)[indices])
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


def _k_largest(candidates: np.ndarray, magnitudes: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of largest magnitude, in their (ascending) order; of several equal
    to the k-th largest magnitude, the first ones."""
    kth = np.partition(magnitudes, magnitudes.size - k)[magnitudes.size - k]
    keep = magnitudes > kth
    ties = np.flatnonzero(magnitudes == kth)[:k - int(np.count_nonzero(keep))]
    keep[ties] = True
    return candidates[keep]


class RandomK(_Sparsifier):
    """k coordinates drawn uniformly with replacement from a seed that travels instead of
    the indices; values are scaled by numel / k, so the estimate is unbiased: coordinate i
    is drawn Binomial(k, 1/numel) times, E[count] * x_i * numel / k = x_i.

    The indices come from SplitMix64 (`splitmix.uniform_below`), which any language can
    implement; the payload seeds of successive encodes are SplitMix64(`seed` param)
    outputs 0, 1, 2, ... shifted right by one bit (non-negative int64).
    """

    biased = False

    def __init__(self, spec: CodecSpec) -> None:
        check_param_names(spec, ("k", "ratio", "seed"))
        super().__init__(spec)
        size = f"k={self.fixed_k}" if self.fixed_k is not None else f"ratio={self.ratio:g}"
        self.spec = CodecSpec.parse(f"randomk:{size}")
        self._seed = int_param(spec, "seed", 12345, 0, 2**64 - 1)
        self._encodes = 0  # counter of the payload-seed stream

    @staticmethod
    def indices(seed: int, numel: int, k: int, device: torch.device) -> torch.Tensor:
        """The same indices on every machine, device and language (docs/wire.md)."""
        if k == 0:
            return torch.empty(0, dtype=torch.int64, device=device)
        drawn = splitmix.uniform_below(seed, numel, k).astype("int64")
        return torch.from_numpy(drawn).to(device)

    def next_seed(self) -> int:
        """The payload seed of the next encode: a non-negative int64."""
        seed = splitmix.splitmix64_at(self._seed, self._encodes) >> 1
        self._encodes += 1
        return seed

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_with_seed(x, self.next_seed())

    def encode_with_seed(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """The payload for `x` with the given payload seed (0 <= seed < 2**63)."""
        numel = x.numel()
        k = self.k_for(numel)
        picked = x[self.indices(seed, numel, k, x.device)]
        # One rounding: the product in float64, then to the tensor's dtype (docs/wire.md).
        values = (picked.double() * (numel / max(k, 1))).to(x.dtype)
        header = torch.tensor([seed], dtype=torch.int64, device=x.device)
        return torch.cat([bytes_of(header), bytes_of(values)])

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
