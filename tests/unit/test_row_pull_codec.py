"""Pulled rows under each pull codec (issue #16, docs/wire.md section 11): under qsgd the
row values themselves are quantised (one scale per row), decode within the stated bound, are
unbiased in expectation, and a client refuses any other encoding than the one its session's
pull codec implies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramserver.codecs import CodecError
from paramserver.optimizer import OptimizerConfig
from paramserver.serde.tables import decode_row_pull_response, encode_row_pull_header
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.tables import RowPullHeader, RowPullRequest, TableSpec, initial_rows
from paramserver.tables.row_codec import decode_rows, encode_rows, error_bound, expected_rows
from paramserver.types import CodecSpec, Mode, Role
from paramserver.wire import Chunk
from tests.helpers import register_stream
from tests.table_helpers import declare

QSGD8 = CodecSpec.parse("qsgd:bits=8,bucket=512")  # as negotiated: bucket is the dense one


def _rows(rows: int = 8, dim: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-3, 1, rows)[:, None]  # rows of very different magnitudes
    return torch.randn(rows, dim, generator=gen) * scales


def _round_trip(values: torch.Tensor, codec: CodecSpec, seed: int = 1) -> torch.Tensor:
    dtype, encoding, payload = encode_rows(values, codec, seed)
    header = decode_row_pull_response(encode_row_pull_header(
        RowPullHeader(7, "t", values.shape[0], values.shape[1], dtype, encoding)))
    assert isinstance(header, RowPullHeader)
    return decode_rows(header, bytes(payload.numpy()), codec)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_rows_decode_within_the_bound_with_one_scale_per_row(bits: int) -> None:
    values = _rows()
    codec = CodecSpec.parse(f"qsgd:bits={bits}")
    dtype, encoding, payload = encode_rows(values, codec, seed=3)
    assert dtype == torch.float32
    assert encoding == CodecSpec("qsgd", (("bits", str(bits)), ("bucket", "16")))
    assert payload.numel() == 8 * 4 + 8 * 16 * bits // 8  # a float32 scale per row + codes
    decoded = _round_trip(values, codec, seed=3)
    error = (decoded - values).abs().amax(dim=1)
    assert bool((error <= error_bound(values, bits)).all())
    # per-row scales: the smallest row (1e-3) keeps its own precision
    assert float(error[0]) <= 1e-3 * 5 / (2 ** (bits - 1) - 1)


def test_qsgd_rows_are_unbiased_in_expectation() -> None:
    """4 bits (7 levels a side): round-to-nearest would be off by up to max|row| / 14; the
    mean of 2000 independently seeded encodings must sit within 6 standard errors."""
    values, draws = _rows(rows=4, dim=16, seed=5), 2000
    total = torch.zeros_like(values)
    for seed in range(draws):
        total += _round_trip(values, CodecSpec.parse("qsgd:bits=4"), seed)
    mean = total / draws
    step = values.abs().amax(dim=1, keepdim=True) / 7  # one quantisation step per row
    # the variance of one decode is at most step^2 / 4
    assert bool(((mean - values).abs() <= 6 * step / 2 / draws ** 0.5).all())
    nearest = torch.round(values / step) * step  # a biased quantiser, for contrast
    assert float((nearest - values).abs().max() / step.max()) > 0.1


@pytest.mark.parametrize("codec, dtype, atol", [
    ("none", torch.float32, 0.0), ("fp16", torch.float16, 1e-2), ("bf16", torch.bfloat16, 1e-1),
    ("topk:ratio=0.1", torch.float32, 0.0)])
def test_the_other_pull_codecs_carry_raw_values(codec: str, dtype: torch.dtype,
                                                atol: float) -> None:
    values = _rows()
    assert expected_rows(CodecSpec.parse(codec), 16) == (dtype, None)
    torch.testing.assert_close(_round_trip(values, CodecSpec.parse(codec)), values,
                               atol=atol, rtol=1e-2 if atol else 0)


def _header(dtype: torch.dtype = torch.float32, encoding: str | None = "qsgd:bits=8,bucket=16",
            rows: int = 8) -> RowPullHeader:
    return RowPullHeader(1, "t", rows, 16, dtype,
                         None if encoding is None else CodecSpec.parse(encoding))


@pytest.mark.parametrize("session, header", [
    (QSGD8, _header(encoding=None)),  # raw float32 where qsgd was agreed
    (QSGD8, _header(encoding="qsgd:bits=4,bucket=16")),  # other bits
    (QSGD8, _header(encoding="qsgd:bits=8,bucket=512")),  # a scale across rows
    (QSGD8, _header(encoding="topk:ratio=0.1")),  # not a row encoding
    (QSGD8, _header(dtype=torch.float16)),  # the decoded type is float32
    (CodecSpec("none"), _header()),  # encoded where none was agreed
    (CodecSpec("fp16"), _header(encoding=None)),  # float32 where fp16 was agreed
])
def test_a_row_pull_with_an_unexpected_encoding_is_refused(session: CodecSpec,
                                                           header: RowPullHeader) -> None:
    _, _, payload = encode_rows(_rows(), QSGD8, seed=1)
    with pytest.raises(CodecError, match="expects"):
        decode_rows(header, bytes(payload.numpy()), session)


def _corrupt(payload: bytes, what: str) -> bytes:
    data = bytearray(payload)
    if what == "truncated":
        return bytes(data[:-1])
    if what == "longer":
        return bytes(data + b"\0")
    if what == "nan scale":
        data[0:4] = np.float32("nan").tobytes()
    elif what == "negative scale":
        data[0:4] = np.float32(-1).tobytes()
    else:  # a code of 255: outside [0, 254] at 8 bits
        data[8 * 4] = 255
    return bytes(data)


@pytest.mark.parametrize("what", ["truncated", "longer", "nan scale", "negative scale",
                                  "code out of range"])
def test_a_bad_qsgd_row_payload_is_refused(what: str) -> None:
    _, _, payload = encode_rows(_rows(), QSGD8, seed=1)
    with pytest.raises(CodecError):
        decode_rows(_header(), _corrupt(bytes(payload.numpy()), what), QSGD8)


def test_a_raw_row_payload_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(CodecError, match="bytes"):
        decode_rows(_header(encoding=None), bytes(8 * 16 * 4 - 4), CodecSpec("none"))


def _pull_payload(core: ParameterServerCore, session: str,
                  ids: np.ndarray) -> tuple[RowPullHeader, bytes]:
    messages = [decode_row_pull_response(m) for m in core.tables.pull(
        RowPullRequest(session, "emb", ids), 1.0)]
    header = messages[0]
    assert isinstance(header, RowPullHeader)
    return header, b"".join(bytes(c.data) for c in messages[1:] if isinstance(c, Chunk))


def test_the_server_quantises_rows_under_a_qsgd_pull_codec_with_fresh_draws() -> None:
    core = ParameterServerCore(ServerConfig(mode=Mode.ASYNC, expected_workers=1,
                                            optimizer=OptimizerConfig(lr=0.1)))
    answer = core.handshake("w0", Role.WORKER, [], [CodecSpec.parse("qsgd:bits=8")])
    session = answer.session_id
    core.register(iter(register_stream(session, {"w": torch.zeros(3)})))
    table = TableSpec("emb", 1000, 16, init_scale=0.5)
    declare(core, session, table)
    ids = np.arange(0, 1000, 7)
    before = core.tables.state_hash()
    header, first = _pull_payload(core, session, ids)
    _, second = _pull_payload(core, session, ids)
    assert core.tables.state_hash() == before  # a pull stores nothing
    assert header.encoding == CodecSpec("qsgd", (("bits", "8"), ("bucket", "16")))
    assert len(first) == len(ids) * (4 + 16) and first != second  # new draws per pull
    stored = initial_rows(table, ids)
    for payload in (first, second):
        rows = decode_rows(header, payload, answer.pull_codec)
        assert bool(((rows - stored).abs().amax(dim=1) <= error_bound(stored, 8)).all())
