"""`qsgd`: stochastic uniform quantisation to 8, 4 or 2 bits with a scale per bucket.

Alistarh et al. 2017 (QSGD). Each bucket of `bucket` values is scaled by its largest
magnitude m; x/m * s (s = 2**(bits-1) - 1 levels each side) is rounded down or up at random
with the probability that makes the expectation exact, so decode(encode(x)) is unbiased.
Codes q + s in [0, 2s] are packed densely: 1, 2 or 4 per byte, element 0 in the lowest
bits of its byte.

payload: scales float32[buckets] | packed codes[ceil(numel * bits / 8)]   (little-endian;
byte-exact definition in docs/wire.md)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from paramserver.codecs.base import (
    CodecError,
    DenseUpdate,
    bytes_of,
    check_param_names,
    expect_nbytes,
    int_param,
    view_as,
)
from paramserver.types import CodecSpec

BITS = (2, 4, 8)
MAX_BUCKET = 1 << 16
CHUNK = 1 << 18  # elements per pass of the CPU encoder: its temporaries stay in the cache
DRAW_BITS = 16  # the CPU encoder's rounding draws: r / 2**16 for a 16-bit integer r


class QSGD:
    biased = False

    def __init__(self, spec: CodecSpec) -> None:
        check_param_names(spec, ("bits", "bucket", "seed"))
        self.bits = int_param(spec, "bits", 8, 1, 64)
        # The bound keeps decoding's per-bucket temporaries small: an unbounded bucket let a
        # 7-byte push allocate 1 GiB (issue #13).
        self.bucket = int_param(spec, "bucket", 512, 1, MAX_BUCKET)
        if self.bits not in BITS:
            raise CodecError(f"qsgd: bits must be one of {BITS}, got {self.bits}")
        self.levels = 2 ** (self.bits - 1) - 1
        self.per_byte = 8 // self.bits
        self.spec = CodecSpec.parse(f"qsgd:bits={self.bits},bucket={self.bucket}")
        self._generators: dict[torch.device, torch.Generator] = {}
        self._seed = int_param(spec, "seed", 2024, 0, 2**63 - 1)
        self._bits = np.random.PCG64(self._seed)  # the CPU encoder's draws, 4 per output

    def _buckets(self, numel: int) -> int:
        return math.ceil(numel / self.bucket)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            raise CodecError(f"qsgd only encodes floating-point tensors, not {x.dtype}")
        if x.device.type == "cpu" and x.numel():
            return self._encode_cpu(x)
        generator = self._generators.setdefault(
            x.device, torch.Generator(device=x.device).manual_seed(self._seed))
        draws = torch.rand(self._buckets(x.numel()) * self.bucket, device=x.device,
                           generator=generator)
        return self.encode_with(x, draws)

    def encode_with(self, x: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """The payload for `x` given its rounding draws: element i is rounded up when
        uniforms[i] < frac(y_i). `uniforms` holds float32 values in [0, 1), at least one per
        element; the draws are not part of the wire format (the golden vectors fix them)."""
        if not x.dtype.is_floating_point:
            raise CodecError(f"qsgd only encodes floating-point tensors, not {x.dtype}")
        numel, buckets = x.numel(), self._buckets(x.numel())
        padded = torch.zeros(buckets * self.bucket, dtype=torch.float32, device=x.device)
        padded[:numel] = x.reshape(-1)
        grouped = padded.view(buckets, self.bucket)  # (buckets, bucket)
        scales = grouped.abs().amax(dim=1)  # (buckets,)
        y = grouped / scales.clamp_min(torch.finfo(torch.float32).tiny)[:, None] * self.levels
        low = torch.floor(y)
        draws = uniforms.reshape(-1).to(device=x.device, dtype=torch.float32)
        if draws.numel() < numel:
            raise ValueError(f"qsgd needs {numel} uniform draws, got {draws.numel()}")
        if draws.numel() != padded.numel():  # the padding's draws do not matter
            draws = torch.cat([draws[:numel], padded.new_zeros(padded.numel() - numel)])
        up = draws.view(y.shape) < (y - low)
        codes = (low + up + self.levels).to(torch.uint8).view(-1)[:numel]
        return torch.cat([bytes_of(scales), self._pack(codes)])

    def _encode_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """The CPU encoder: the same y_i, rounded as c_i = floor(y_i + r_i / 2**16) + s for
        16-bit draws r_i (numpy PCG64, each
        64-bit output split into four), i.e. up with probability frac(y_i) to within 2**-16.
        One pass over the input in CHUNK-element pieces (a multiple of the bucket where the
        bucket divides it), so every temporary is reused and stays in the cache."""
        flat = x.detach().reshape(-1).to(torch.float32).numpy()
        numel, buckets = flat.size, self._buckets(flat.size)
        scales = np.empty(buckets, dtype=np.float32)
        codes = np.empty(numel, dtype=np.uint8)
        step = max(1, CHUNK // self.bucket) * self.bucket
        y = np.empty(min(step, numel), dtype=np.float32)
        draws = np.empty(min(step, numel), dtype=np.float32)
        with np.errstate(invalid="ignore"):  # NaN/inf input: its scale makes it refused
            for start in range(0, numel, step):
                self._encode_piece(flat[start:start + step], start, scales, codes, y, draws)
        packed = self._pack(torch.from_numpy(codes))
        return torch.cat([bytes_of(torch.from_numpy(scales)), packed])

    def _encode_piece(self, piece: np.ndarray, start: int, scales: np.ndarray,
                      codes: np.ndarray, y: np.ndarray, draws: np.ndarray) -> None:
        n, size = piece.size, self.bucket
        full, first = n // size, start // size
        y, draws = y[:n], draws[:n]
        np.abs(piece, out=y)
        if full:
            np.max(y[:full * size].reshape(full, size), axis=1,
                   out=scales[first:first + full])
        if full * size < n:  # the short last bucket
            scales[first + full] = y[full * size:].max()
        # y = x * (s / m): one multiply where the spec divides then multiplies. The factor
        # is rounded down (one ulp), so |y| <= s and y + r / 2**16 < s + 1: no code
        # rounds past the top.
        factor = np.nextafter(np.float32(self.levels) / np.maximum(
            scales[first:first + math.ceil(n / size)], np.float32(2.0 ** -126)),
            np.float32(0))
        if full:
            np.multiply(piece[:full * size].reshape(full, size), factor[:full, None],
                        out=y[:full * size].reshape(full, size))
        if full * size < n:
            np.multiply(piece[full * size:], factor[full], out=y[full * size:])
        random = self._bits.random_raw(math.ceil(n / 4)).view(np.uint16)[:n]
        np.multiply(random, np.float32(2.0 ** -DRAW_BITS), out=draws)
        np.add(y, draws, out=y)
        np.add(y, np.float32(self.levels), out=y)  # >= 0 now, so the cast below floors
        codes[start:start + n] = y

    def _pack(self, codes: torch.Tensor) -> torch.Tensor:
        if self.per_byte == 1:
            return codes
        padded = torch.zeros(math.ceil(codes.numel() / self.per_byte) * self.per_byte,
                             dtype=torch.uint8, device=codes.device)
        padded[:codes.numel()] = codes
        lanes = padded.view(-1, self.per_byte)
        packed = lanes[:, 0].clone()
        for lane in range(1, self.per_byte):
            packed |= lanes[:, lane] << (lane * self.bits)
        return packed

    def _unpack(self, packed: torch.Tensor, numel: int) -> torch.Tensor:
        if self.per_byte == 1:
            return packed[:numel]
        mask = (1 << self.bits) - 1
        lanes = [(packed >> (lane * self.bits)) & mask for lane in range(self.per_byte)]
        return torch.stack(lanes, dim=1).view(-1)[:numel]

    def decode(self, payload: torch.Tensor, numel: int, dtype: torch.dtype) -> DenseUpdate:
        buckets = self._buckets(numel)
        packed_nbytes = math.ceil(numel / self.per_byte)
        expect_nbytes(payload, buckets * 4 + packed_nbytes, str(self.spec))
        scales = view_as(payload, 0, buckets, torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise CodecError("qsgd payload has a NaN, infinite or negative scale")
        codes = self._unpack(payload[buckets * 4:], numel)
        if numel and int(codes.max()) > 2 * self.levels:
            raise CodecError(f"qsgd code out of range [0, {2 * self.levels}]")
        return DenseUpdate(self._values(codes, scales, numel).to(dtype))

    def _values(self, codes: torch.Tensor, scales: torch.Tensor, numel: int) -> torch.Tensor:
        """v_i = f32(f32(f32(c_i - s) / s) * m_b), a bucket-aligned piece at a time (the
        temporaries stay in the cache and no per-element scale is materialised)."""
        values = torch.empty(numel, dtype=torch.float32, device=codes.device)
        step = max(1, CHUNK // self.bucket) * self.bucket
        for start in range(0, numel, step):
            piece = values[start:start + step]
            n = piece.numel()
            piece.copy_(codes[start:start + n]).sub_(self.levels).div_(self.levels)
            full, first = n // self.bucket, start // self.bucket
            if full:
                piece[:full * self.bucket].view(full, self.bucket).mul_(
                    scales[first:first + full, None])
            if full * self.bucket < n:
                piece[full * self.bucket:].mul_(scales[first + full])
        return values

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return self._buckets(numel) * 4 + math.ceil(numel / self.per_byte)
