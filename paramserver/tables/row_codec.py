"""What a row pull carries under each pull codec, and its encoding and decoding (issue #16).

docs/wire.md section 11 is the contract. The values of a row pull are the `rows x dim`
float32 rows themselves (never a delta: a worker keeps no rows across steps):

- `none`, `topk`: raw float32; `fp16` / `bf16`: raw values of that type (the header's
  `dtype` says which). No `encoding`.
- `qsgd:bits=b`: one qsgd payload (section 4.4's format, unchanged) of the rows flattened
  row by row, with `bucket = dim`: one scale per row. The header's `encoding` is
  `qsgd:bits=b,bucket=dim` and its `dtype` FLOAT32 (the decoded values). Each value
  decodes to within max|row| / (2^(b-1) - 1) of the stored value, and is unbiased (to
  within max|row| / (2^(b-1) - 1) / 2^16, the encoder's 16-bit rounding draws).

A client derives the expected (dtype, encoding) from its session's pull codec and refuses
a header that says anything else (`expected_rows`, `decode_rows`).
"""

from __future__ import annotations

import math

import torch

from paramserver.codecs import CodecError, make_codec
from paramserver.codecs.base import to_dense
from paramserver.tables.records import RowPullHeader
from paramserver.types import CodecSpec

CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
QSGD_ROW_BITS = 8  # a qsgd pull codec whose spec names no bits


def expected_rows(pull_codec: CodecSpec, dim: int) -> tuple[torch.dtype, CodecSpec | None]:
    """(dtype, encoding) of a row pull of `dim`-wide rows under the session's pull codec."""
    if pull_codec.name in CAST_DTYPES:
        return CAST_DTYPES[pull_codec.name], None
    if pull_codec.name == "qsgd":
        bits = int(float(dict(pull_codec.params).get("bits", QSGD_ROW_BITS)))
        return torch.float32, CodecSpec("qsgd", (("bits", str(bits)), ("bucket", str(dim))))
    return torch.float32, None


def encode_rows(values: torch.Tensor, pull_codec: CodecSpec,
                seed: int) -> tuple[torch.dtype, CodecSpec | None, torch.Tensor]:
    """(dtype, encoding, payload bytes) of float32 rows `values` (rows, dim) for a session
    whose pull codec is `pull_codec`; `seed` seeds qsgd's rounding draws (pass a fresh one
    per pull, so that a row's rounding errors are independent from pull to pull)."""
    dtype, encoding = expected_rows(pull_codec, values.shape[1])
    flat = values.reshape(-1)
    if encoding is None:
        return dtype, None, flat.to(dtype).contiguous().view(torch.uint8)
    if not flat.numel():
        return dtype, encoding, torch.empty(0, dtype=torch.uint8)
    seeded = CodecSpec(encoding.name, (*encoding.params, ("seed", str(seed % 2**63))))
    return dtype, encoding, make_codec(seeded).encode(flat)


def decode_rows(header: RowPullHeader, payload: bytes | bytearray | memoryview,
                pull_codec: CodecSpec) -> torch.Tensor:
    """The float32 rows (header.rows, header.dim) a row pull's answer carries. CodecError
    when the header's dtype or encoding is not the one `pull_codec` implies, or the payload
    does not decode (wrong size, bad scale, code out of range)."""
    dtype, encoding = expected_rows(pull_codec, header.dim)
    if header.dtype != dtype or header.encoding != encoding:
        raise CodecError(f"row pull of table {header.table!r} carries {header.dtype} "
                         f"encoded as {header.encoding or 'raw values'}; under pull codec "
                         f"{pull_codec} this client expects {dtype} encoded as "
                         f"{encoding or 'raw values'}")
    numel = header.rows * header.dim
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if len(payload) \
        else torch.empty(0, dtype=torch.uint8)
    if encoding is None:
        if data.numel() != numel * dtype.itemsize:
            raise CodecError(f"row pull of {header.rows} x {header.dim} {dtype} values "
                             f"carried {data.numel()} bytes")
        values = data.view(dtype).float()
    else:
        update = make_codec(encoding).decode(data, numel, torch.float32)
        values = to_dense(update, numel, torch.float32)
    return values.view(header.rows, header.dim)


def error_bound(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row, the largest |decoded - stored| a qsgd row pull of `bits` allows:
    max|row| / (2^(bits-1) - 1), widened by float32 rounding (a few ulps of max|row|)."""
    levels = 2 ** (bits - 1) - 1
    scale = rows.abs().amax(dim=1)
    return scale / levels * (1 + 2 ** -20) + scale * 4 * math.ldexp(1.0, -24)
