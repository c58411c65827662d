"""Records, codec specs, negotiation and chunking."""

from __future__ import annotations

import itertools

import grpc
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from paramserver import serde
from paramserver.codecs import CodecLimits, make_codec, negotiate
from paramserver.errors import FailedPrecondition
from paramserver.proto import paramserver_pb2 as pb
from paramserver.transport import chunk_ranges
from paramserver.types import CodecSpec, ModelLayout, PushHeader, TensorSpec


def test_codec_spec_parse_and_str_round_trip() -> None:
    spec = CodecSpec.parse("TopK:ratio=0.01,mode=approx")
    assert spec.name == "topk"
    assert dict(spec.params) == {"ratio": "0.01", "mode": "approx"}
    assert CodecSpec.parse(str(spec)) == spec
    with pytest.raises(ValueError, match="not key=value"):
        CodecSpec.parse("qsgd:bits")


ONLY_NONE = CodecLimits(allowed=("none",))


def test_negotiation_picks_first_allowed_offer() -> None:
    offers = [CodecSpec.parse("topk:ratio=0.01"), CodecSpec("none")]
    assert negotiate("push", offers, ONLY_NONE) == CodecSpec("none")
    assert negotiate("push", [], ONLY_NONE) == CodecSpec("none")  # no offer means `none`
    assert negotiate("push", offers, CodecLimits()) == CodecSpec.parse(
        "topk:ratio=0.01,mode=approx")  # canonical form, defaults filled in


def test_negotiation_adjusts_offers_into_the_servers_limits() -> None:
    limits = CodecLimits(min_ratio=0.005, min_bits=4)
    assert negotiate("push", [CodecSpec.parse("randomk:ratio=0.0001")], limits) == \
        CodecSpec.parse("randomk:ratio=0.005")
    assert negotiate("push", [CodecSpec.parse("qsgd:bits=2")], limits) == \
        CodecSpec.parse("qsgd:bits=4,bucket=512")


def test_pulls_negotiate_elementwise_and_delta_codecs_only() -> None:
    offers = [CodecSpec.parse("randomk:ratio=0.01"), CodecSpec("fp16")]
    assert negotiate("pull", offers, CodecLimits()) == CodecSpec("fp16")  # no random-k pulls
    # Issue #14: top-k and qsgd pull deltas (server/pull_streams.py).
    offers = [CodecSpec.parse("topk:ratio=0.01"), CodecSpec("fp16")]
    # A top-k pull by ratio gets min_k=16 (small tensors whole); a push does not.
    assert negotiate("pull", offers, CodecLimits()) == CodecSpec.parse(
        "topk:min_k=16,mode=approx,ratio=0.01")
    assert negotiate("push", offers, CodecLimits()) == CodecSpec.parse(
        "topk:mode=approx,ratio=0.01")
    for own in ("topk:k=5", "topk:min_k=2,ratio=0.01"):  # the worker's own choice stands
        assert negotiate("pull", [CodecSpec.parse(own)], CodecLimits()) == \
            make_codec(own).spec


def test_bad_codec_params_are_skipped() -> None:
    assert negotiate("push", [CodecSpec.parse("qsgd:bits=3"), CodecSpec("bf16")],
                     CodecLimits()) == CodecSpec("bf16")


def test_negotiation_failure_names_both_sides() -> None:
    with pytest.raises(FailedPrecondition) as info:
        negotiate("push", [CodecSpec.parse("topk:ratio=0.01")], ONLY_NONE)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "topk:ratio=0.01" in info.value.message and "none" in info.value.message


def test_layout_differences_are_explained() -> None:
    a = ModelLayout((TensorSpec("w", (2, 3), torch.float32), TensorSpec("b", (3,), torch.float32)))
    assert a.describe_difference(a) == ""
    b = ModelLayout((TensorSpec("w", (3, 2), torch.float32), TensorSpec("b", (3,), torch.float32)))
    assert "'w'" in a.describe_difference(b) and "[2, 3]" in a.describe_difference(b)
    c = ModelLayout((TensorSpec("w", (2, 3), torch.float32),))
    assert "missing" in a.describe_difference(c)
    with pytest.raises(ValueError, match="duplicate"):
        ModelLayout((TensorSpec("w", (1,), torch.float32), TensorSpec("w", (1,), torch.float32)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int32, torch.int64])
def test_layout_proto_round_trip(dtype: torch.dtype) -> None:
    layout = ModelLayout((TensorSpec("x", (4, 0, 2), dtype), TensorSpec("y", (), dtype)))
    assert serde.layout_from_proto(serde.layout_to_proto(layout)) == layout


def test_remembered_specs_stay_checked_and_unchanged() -> None:
    spec = TensorSpec("w", (2, 3), torch.float32)
    header = pb.PushHeader(tensors=[serde.spec_to_proto(spec)])
    header.tensors[0].name = "changed"  # the header holds a copy of the remembered message
    assert serde.spec_to_proto(spec).name == "w"
    assert serde.decode_push_request(serde.encode_push_header(
        PushHeader("s", 1, 1, (spec,)))).tensors == (spec,)
    assert serde.spec_from_proto(serde.spec_to_proto(spec)) == spec
    again = serde.spec_from_proto(pb.TensorSpec.FromString(
        serde.spec_to_proto(spec).SerializeToString()))
    assert again is serde.spec_from_proto(serde.spec_to_proto(spec))  # read once
    with pytest.raises(ValueError, match="negative"):
        serde.spec_from_proto(pb.TensorSpec(name="w", shape=[2, -3], dtype=pb.FLOAT32))


def test_unsupported_dtype_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot travel"):
        serde.spec_to_proto(TensorSpec("c", (2,), torch.complex64))


@given(nbytes=st.integers(0, 10_000), chunk=st.integers(1, 3000))
def test_chunk_ranges_cover_exactly_once(nbytes: int, chunk: int) -> None:
    ranges = chunk_ranges(nbytes, chunk)
    assert sum(end - start for start, end in ranges) == nbytes
    assert all(0 < end - start <= chunk for start, end in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_token_bucket_caps_the_rate() -> None:
    import time

    from benchmarks.shaping import TokenBucket
    from paramserver.transport import parse_bandwidth

    assert parse_bandwidth("100mbit") == 12.5e6 and parse_bandwidth("unlimited") is None
    assert parse_bandwidth("10Gbit/s") == 1.25e9
    bucket = TokenBucket(1e6, burst_bytes=1000)  # 1 MB/s
    started = time.monotonic()
    for _ in range(10):
        bucket.charge(20_000)  # 200 kB in all: about 0.2 s at 1 MB/s
    elapsed = time.monotonic() - started
    assert 0.15 < elapsed < 1.0
