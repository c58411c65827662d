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
from collections.abc import Callable

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
from paramserver.codecs.streaming import StreamedPayload
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
        return self.stream_encode(x).complete()

    def _step(self) -> int:
        """Elements per piece: CHUNK rounded to whole buckets."""
        return max(1, CHUNK // self.bucket) * self.bucket

    def _decode_step(self) -> int:
        """Elements per decoded piece: whole buckets that start on a byte of the codes."""
        unit = math.lcm(self.bucket, self.per_byte)
        return max(1, CHUNK // unit) * unit

    def stream_encode(self, x: torch.Tensor, after: PieceHook | None = None,
                      minus: torch.Tensor | None = None, into: torch.Tensor | None = None,
                      ) -> StreamedPayload:
        """The CPU encoder, made a piece at a time as the payload is read (the bytes are
        `encode`'s). Every bucket's scale is found when the payload is first read (they lead
        it); each piece's codes are then made when a reader reaches them, so the sender
        encodes piece i + 1 while piece i is on the wire. `after` sees each piece's unpacked codes
        as it is made (`PieceHook`). With `minus` and `into` (float32, x's size), what is
        encoded is x - minus, written into `into` in the pass that finds the scales, which
        then runs at once (`minus` may change after the call).

        The rounding: the same y_i as `encode_with`, rounded as c_i = floor(y_i + r_i / 2**16)
        + s for 16-bit draws r_i (numpy PCG64, each 64-bit output split into four), i.e. up
        with probability frac(y_i) to within 2**-16. Every temporary is a piece long and
        reused, so it stays in the cache. The input must not change until the payload
        is made to its end."""
        if not x.dtype.is_floating_point:
            raise CodecError(f"qsgd only encodes floating-point tensors, not {x.dtype}")
        source = x.detach().reshape(-1).to(torch.float32).numpy()
        other = minus.detach().reshape(-1).numpy() if minus is not None else None
        flat = into.reshape(-1).numpy() if other is not None and into is not None else source
        numel, buckets = flat.size, self._buckets(flat.size)
        out = torch.empty(self.max_payload_nbytes(numel, torch.float32), dtype=torch.uint8)
        scales = out[:buckets * 4].view(torch.float32).numpy()
        step = self._step()
        # A piece must start on a byte of the packed codes: whole pieces at once otherwise.
        piece_size = step if step % self.per_byte == 0 else max(numel, 1)
        encoder = _PieceEncoder(self, flat, scales, after, piece_size)
        if other is None:  # the scales too are found when first read
            encoder.scales_from = source
            return StreamedPayload(out.numel(), encoder.produce, out)
        self._find_scales(source, other, flat, scales)  # now: `minus` may change later
        return StreamedPayload(out.numel(), encoder.produce, out, filled=buckets * 4)

    def _find_scales(self, source: np.ndarray, other: np.ndarray | None, flat: np.ndarray,
                     scales: np.ndarray) -> None:
        """Every bucket's scale (of source - other, written into flat, with `other`)."""
        step = self._step()
        y = np.empty(min(step, flat.size), dtype=np.float32)
        with np.errstate(invalid="ignore"):  # NaN/inf input: its scale makes it refused
            for start in range(0, flat.size, step):
                if other is not None:  # in the cache for the scales' pass just below
                    np.subtract(source[start:start + step], other[start:start + step],
                                out=flat[start:start + step])
                self._scale_piece(flat[start:start + step], start, scales, y)

    def _scale_piece(self, piece: np.ndarray, start: int, scales: np.ndarray,
                     y: np.ndarray) -> None:
        n, size = piece.size, self.bucket
        full, first = n // size, start // size
        y = y[:n]
        np.abs(piece, out=y)
        if full:
            np.max(y[:full * size].reshape(full, size), axis=1,
                   out=scales[first:first + full])
        if full * size < n:  # the short last bucket
            scales[first + full] = y[full * size:].max()

    def _code_piece(self, piece: np.ndarray, start: int, scales: np.ndarray,
                    codes: np.ndarray, y: np.ndarray, draws: np.ndarray) -> None:
        """codes[:n] = the codes of `piece` (elements start.., bucket-aligned)."""
        n, size = piece.size, self.bucket
        full, first = n // size, start // size
        y, draws = y[:n], draws[:n]
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
        codes[:n] = y

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
        expect_nbytes(payload, self.max_payload_nbytes(numel, dtype), str(self.spec))
        decoding = _Decoding(self, numel, payload)
        decoding.scales_arrived()
        decoding.decode_to(numel)
        return DenseUpdate(decoding.values.to(dtype))

    def stream_decoder(self, numel: int, dtype: torch.dtype,
                       out: torch.Tensor | None = None) -> QSGDStreamDecoder:
        """A decoder fed the payload's bytes as they arrive (`streaming.StreamDecoder`),
        decoding into `out` (float32, numel elements) when given."""
        return QSGDStreamDecoder(self, numel, dtype, out)

    def _dequantise(self, codes: torch.Tensor, scales: torch.Tensor, start: int,
                    out: torch.Tensor) -> None:
        """out = v_i = f32(f32(f32(c_i - s) / s) * m_b) for the codes of elements
        start.. (bucket-aligned); no per-element scale is materialised."""
        n = out.numel()
        out.copy_(codes[:n]).sub_(self.levels).div_(self.levels)
        full, first = n // self.bucket, start // self.bucket
        if full:
            out[:full * self.bucket].view(full, self.bucket).mul_(
                scales[first:first + full, None])
        if full * self.bucket < n:
            out[full * self.bucket:].mul_(scales[first + full])

    def add_codes(self, target: torch.Tensor, codes: np.ndarray, scales: torch.Tensor,
                  start: int) -> None:
        """target += the values of `codes` (elements start.., bucket-aligned, unpacked)."""
        values = torch.empty(codes.size, dtype=torch.float32)
        self._dequantise(torch.from_numpy(codes), scales, start, values)
        target.add_(values.to(target.dtype))

    def max_payload_nbytes(self, numel: int, dtype: torch.dtype) -> int:
        return self._buckets(numel) * 4 + math.ceil(numel / self.per_byte)


# (start, codes, scales): the unpacked codes of elements [start, start + codes.size) as a
# piece is made, and every bucket's scale.
PieceHook = Callable[[int, np.ndarray, torch.Tensor], None]


class _PieceEncoder:
    """The codes of one `stream_encode`, a piece of `piece` elements per `produce` call."""

    def __init__(self, codec: QSGD, flat: np.ndarray, scales: np.ndarray,
                 after: PieceHook | None, piece: int) -> None:
        self.codec, self.flat, self.scales, self.after, self.piece = (
            codec, flat, scales, after, piece)
        self.offset = scales.nbytes  # where the packed codes start
        self.scales_from: np.ndarray | None = None  # set: the scales are still to be found
        self.done = 0  # elements coded so far
        size = min(codec._step(), flat.size)
        self.y = np.empty(size, dtype=np.float32)
        self.draws = np.empty(size, dtype=np.float32)
        self.codes = (np.empty(min(piece, flat.size), dtype=np.uint8)
                      if codec.per_byte > 1 else None)

    def produce(self, out: torch.Tensor, filled: int) -> int:
        if self.scales_from is not None:  # the first read: the scales lead the payload
            self.codec._find_scales(self.scales_from, None, self.flat, self.scales)
            self.scales_from = None
            return self.offset
        codec, start = self.codec, self.done
        end = min(start + self.piece, self.flat.size)
        first = self.offset + start // codec.per_byte
        codes = (self.codes[:end - start] if self.codes is not None  # 8 bits: codes = bytes
                 else out.numpy()[first:first + end - start])
        step = codec._step()
        with np.errstate(invalid="ignore"):
            for at in range(start, end, step):
                stop = min(at + step, end)
                codec._code_piece(self.flat[at:stop], at, self.scales,
                                  codes[at - start:stop - start], self.y, self.draws)
        if self.after is not None:
            self.after(start, codes, torch.from_numpy(self.scales))
        if self.codes is None:
            self.done = end
            return first + end - start
        packed = codec._pack(torch.from_numpy(codes))
        out[first:first + packed.numel()] = packed
        self.done = end
        return first + packed.numel()


class _Decoding:
    """Decodes a payload held in `payload` (its scales first, then codes as they come)
    into `values`, a bucket-aligned piece at a time."""

    def __init__(self, codec: QSGD, numel: int, payload: torch.Tensor,
                 out: torch.Tensor | None = None) -> None:
        self.codec, self.numel, self.payload = codec, numel, payload
        self.buckets = codec._buckets(numel)
        self.values = out if out is not None else torch.empty(numel, dtype=torch.float32)
        self.scales = torch.empty(0)
        self.done = 0  # elements decoded

    def scales_arrived(self) -> None:
        scales = view_as(self.payload, 0, self.buckets, torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise CodecError("qsgd payload has a NaN, infinite or negative scale")
        self.scales = scales

    def decode_to(self, end: int) -> None:
        """Decode elements [done, end); `end` is a piece boundary or numel."""
        codec, base = self.codec, self.buckets * 4
        step = codec._decode_step()
        while self.done < end:
            start = self.done
            n = min(step, end - start)
            packed = self.payload[base + start // codec.per_byte:
                                  base + math.ceil((start + n) / codec.per_byte)]
            codes = codec._unpack(packed, n)
            if int(codes.max()) > 2 * codec.levels:
                raise CodecError(f"qsgd code out of range [0, {2 * codec.levels}]")
            codec._dequantise(codes, self.scales, start, self.values[start:start + n])
            self.done = start + n


class QSGDStreamDecoder:
    """Decodes a qsgd payload while it arrives: once the scales are in, every whole piece
    of codes is decoded as soon as its bytes are, into `out` (float32, numel) or a buffer
    of its own, never into the target: a stream cut short changes nothing. Bytes come by
    `feed` (copied here) or, held by the caller, by `arrived` (read in place)."""

    def __init__(self, codec: QSGD, numel: int, dtype: torch.dtype,
                 out: torch.Tensor | None = None) -> None:
        self._codec, self._dtype = codec, dtype
        self._nbytes = codec.max_payload_nbytes(numel, dtype)
        self._received = 0
        self._decoding = _Decoding(codec, numel, torch.empty(self._nbytes, dtype=torch.uint8),
                                   out)
        self._scales_in = False

    def feed(self, data: memoryview) -> None:
        end = self._received + data.nbytes
        self._check_size(end)
        self._decoding.payload.numpy()[self._received:end] = np.frombuffer(data, np.uint8)
        self._received = end
        self._decode_arrived()

    def arrived(self, payload: torch.Tensor) -> None:
        """`payload` is every byte so far (the same memory each call, growing)."""
        self._check_size(payload.numel())
        self._decoding.payload, self._received = payload, payload.numel()
        self._decode_arrived()

    def _check_size(self, end: int) -> None:
        if end > self._nbytes:
            raise CodecError(f"payload larger than declared: {self._codec.spec} needs "
                             f"{self._nbytes} bytes, got at least {end}")

    def _decode_arrived(self) -> None:
        decoding, end = self._decoding, self._received
        if not self._scales_in and end >= decoding.buckets * 4:
            decoding.scales_arrived()
            self._scales_in = True
        if self._scales_in:
            arrived = min(decoding.numel, (end - decoding.buckets * 4) * self._codec.per_byte)
            step = self._codec._decode_step()
            decoding.decode_to(arrived if arrived == decoding.numel else arrived // step * step)

    def finish(self) -> DenseUpdate:
        expect_nbytes(self._decoding.payload[:self._received], self._nbytes,
                      str(self._codec.spec))
        if not self._scales_in:
            self._decoding.scales_arrived()
            self._scales_in = True
        self._decoding.decode_to(self._decoding.numel)
        return DenseUpdate(self._decoding.values.to(self._dtype))
