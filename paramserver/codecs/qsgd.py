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

    def _buckets(self, numel: int) -> int:
        return math.ceil(numel / self.bucket)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            raise CodecError(f"qsgd only encodes floating-point tensors, not {x.dtype}")
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
        per_element = scales.repeat_interleave(self.bucket)[:numel]
        values = (codes.to(torch.float32) - self.levels) / self.levels * per_element
        return DenseUpdate(values.to(dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return self._buckets(numel) * 4 + math.ceil(numel / self.per_byte)
