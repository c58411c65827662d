"""Property tests for every codec (issue #4): shapes, exactness, top-k, unbiasedness,
error-feedback mass conservation, and refusal of payloads that do not decode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.codecs import CodecError, ErrorFeedback, SparseUpdate, make_codec
from paramserver.codecs.base import to_dense
from paramserver.codecs.sparse import TopK

ALL = ["none", "fp16", "bf16", "topk:ratio=0.05", "topk:ratio=0.05,mode=approx",
       "randomk:ratio=0.1", "qsgd:bits=8", "qsgd:bits=4", "qsgd:bits=2", "topk:k=3"]
FLOATS = [torch.float32, torch.float64]


def _roundtrip(spec: str, x: torch.Tensor) -> torch.Tensor:
    codec = make_codec(spec)
    payload = codec.encode(x)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert payload.numel() <= codec.max_payload_nbytes(x.numel(), x.dtype)
    return to_dense(codec.decode(payload, x.numel(), x.dtype), x.numel(), x.dtype)


@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("spec", ALL)
@given(numel=st.integers(0, 3000), dtype=st.sampled_from(FLOATS), seed=st.integers(0, 999))
def test_decode_of_encode_has_the_right_shape_and_dtype(spec: str, numel: int, dtype, seed: int
                                                        ) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)).to(dtype)
    out = _roundtrip(spec, x)
    assert out.shape == x.shape and out.dtype == x.dtype


@given(numel=st.integers(0, 2000), seed=st.integers(0, 999))
def test_none_is_lossless_and_casts_are_exact_on_representable_values(numel: int, seed: int
                                                                       ) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(_roundtrip("none", x), x)
    assert torch.equal(_roundtrip("fp16", x.half().float()), x.half().float())
    assert torch.equal(_roundtrip("bf16", x.bfloat16().float()), x.bfloat16().float())
    ints = torch.arange(numel, dtype=torch.int64)
    assert torch.equal(_roundtrip("none", ints), ints)


@settings(deadline=None)
@given(numel=st.integers(1, 4000), ratio=st.floats(0.001, 1.0), seed=st.integers(0, 999))
def test_exact_topk_keeps_exactly_the_k_largest(numel: int, ratio: float, seed: int) -> None:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    codec = make_codec(f"topk:ratio={ratio}")
    update = codec.decode(codec.encode(x), numel, x.dtype)
    assert isinstance(update, SparseUpdate)
    k = codec.k_for(numel)  # type: ignore[attr-defined]
    assert update.indices.numel() == k == len(set(update.indices.tolist()))
    assert update.indices.tolist() == sorted(update.indices.tolist())  # canonical order
    assert torch.equal(update.values, x[update.indices])  # values sent unchanged
    kept = x.abs()[update.indices].min()
    dropped = torch.ones(numel, dtype=torch.bool)
    dropped[update.indices] = False
    assert not dropped.any() or x.abs()[dropped].max() <= kept


def test_approx_topk_is_exact_when_enough_candidates_pass_and_never_sends_more_than_k() -> None:
    x = torch.randn(500_000, generator=torch.Generator().manual_seed(1))
    approx, exact = make_codec("topk:ratio=0.01,mode=approx"), make_codec("topk:ratio=0.01")
    a = approx.decode(approx.encode(x), x.numel(), x.dtype)
    e = exact.decode(exact.encode(x), x.numel(), x.dtype)
    assert a.indices.numel() == 5000  # type: ignore[union-attr]
    assert set(a.indices.tolist()) == set(e.indices.tolist())  # type: ignore[union-attr]


@settings(max_examples=25, deadline=None)
@given(numel=st.integers(TopK.SAMPLE + 1, 80_000), ratio=st.floats(0.0005, 0.3),
       levels=st.sampled_from([0, 7, 50]), seed=st.integers(0, 999),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_approx_topk_sends_exactly_the_k_largest_ties_to_the_lowest_index(
        numel: int, ratio: float, levels: int, seed: int, dtype: torch.dtype) -> None:
    """Issue #14: the sampled-threshold selection (the default) sends exactly k values, the
    k largest magnitudes, in ascending index order; rounding the input to a few levels makes
    many ties at the k-th magnitude, and those go to the lowest indices."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    if levels:
        x = torch.round(x * levels / 4) / levels
    x = x.to(dtype)
    codec = make_codec(f"topk:ratio={ratio}")
    update = codec.decode(codec.encode(x), numel, x.dtype)
    k = codec.k_for(numel)  # type: ignore[attr-defined]
    indices = update.indices  # type: ignore[union-attr]
    assert indices.numel() == k and bool((indices[1:] > indices[:-1]).all())
    assert torch.equal(update.values, x[indices])  # type: ignore[union-attr]
    magnitude = x.abs().double()
    kth = magnitude[indices].min()
    dropped = torch.ones(numel, dtype=torch.bool)
    dropped[indices] = False
    assert not bool((magnitude[dropped] > kth).any())  # nothing larger was left out
    tied = torch.nonzero(magnitude == kth).view(-1)
    chosen_ties = tied[~dropped[tied]]
    assert torch.equal(chosen_ties, tied[:chosen_ties.numel()])  # the lowest indices


@pytest.mark.parametrize("nonzeros", [300, 3000])
def test_approx_topk_of_a_mostly_zero_tensor_sends_its_largest_nonzeros(nonzeros: int) -> None:
    """A pull's delta is mostly zeros: the sampled threshold is 0, and the selection is
    over the nonzeros (not every element), never sending a zero: all of them when fewer
    than k (300 < k = 1000), else the k largest."""
    generator = torch.Generator().manual_seed(4)
    x = torch.zeros(100_000)
    where = torch.randperm(100_000, generator=generator)[:nonzeros]
    x[where] = torch.randn(nonzeros, generator=generator)
    codec = make_codec("topk:ratio=0.01")
    update = codec.decode(codec.encode(x), x.numel(), x.dtype)
    expected = where if nonzeros < 1000 else torch.topk(x.abs(), 1000).indices
    assert update.indices.tolist() == sorted(expected.tolist())  # type: ignore[union-attr]
    assert codec.fallbacks == 0  # type: ignore[attr-defined]


def test_approx_topk_falls_back_to_the_full_selection_when_too_few_pass() -> None:
    codec = make_codec("topk:ratio=0.01")
    codec.MARGIN = 0.5  # type: ignore[attr-defined]  # aim at half of k: too few pass
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(3))
    update = codec.decode(codec.encode(x), x.numel(), x.dtype)
    assert codec.fallbacks == 1  # type: ignore[attr-defined]
    assert set(update.indices.tolist()) == set(  # type: ignore[union-attr]
        torch.topk(x.abs(), 1000).indices.tolist())


@settings(max_examples=40, deadline=None)
@given(numel=st.integers(1, 3000), bits=st.sampled_from([2, 4, 8]),
       bucket=st.integers(1, 700), seed=st.integers(0, 999), extreme=st.booleans())
def test_qsgd_cpu_encoder_rounds_to_a_neighbouring_level(numel: int, bits: int, bucket: int,
                                                         seed: int, extreme: bool) -> None:
    """Issue #14: the vectorised CPU encoder's codes are in range and each decoded value is
    one of the two levels around x (within float32 rounding), with the bucket's max |x| as
    its scale; `extreme` makes every magnitude equal to the scale (the top code, in range)."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    if extreme:
        x = torch.sign(x) * 3.0 + (x == 0) * 3.0
    codec = make_codec(f"qsgd:bits={bits},bucket={bucket},seed={seed}")
    out = _decode_own(codec, x)
    levels = 2 ** (bits - 1) - 1
    pad = (-numel) % bucket
    scales = torch.cat([x.abs(), x.new_zeros(pad)]).view(-1, bucket).amax(dim=1)
    step = scales.repeat_interleave(bucket)[:numel] / levels
    assert bool(((out - x).abs() <= step * (1 + 1e-5) + 1e-6).all())
    if extreme:  # y_i is s lowered by an ulp: one level down only when r_i = 0 (2**-16)
        assert int((out != x).sum()) <= 2


def test_qsgd_cpu_encoder_across_pieces_and_a_short_last_bucket() -> None:
    """Buckets that straddle the encoder's pieces (bucket 3000 does not divide 2**18) and a
    short last bucket decode within one level, and the mean error is near zero."""
    x = torch.randn(600_001, generator=torch.Generator().manual_seed(5))
    codec = make_codec("qsgd:bits=8,bucket=3000")
    out = _decode_own(codec, x)
    scales = torch.cat([x.abs(), x.new_zeros(2999)]).view(-1, 3000).amax(dim=1)
    step = scales.repeat_interleave(3000)[:600_001] / 127
    assert bool(((out - x).abs() <= step * (1 + 1e-5)).all())
    assert abs(float((out - x).double().mean())) < 1e-4


def _assert_unbiased(spec: str, trials: int = 400) -> None:
    """The mean of `trials` independent encodings is within 6 pooled standard errors of x
    at every coordinate. Pooled, because a coordinate whose rounding probability is ~1%
    may see no "up" in 400 draws and show a spread of zero. An unbiased codec fails this
    by chance ~1e-4 of the time; a biased one (top-k) fails by far."""
    # Magnitudes in [0.8, 1] keep every coordinate's spread within 25% of the pool's, also
    # for random-k, whose spread is proportional to |x_i|.
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (256,), generator=generator) * 2 - 1
    x = (signs * (0.8 + 0.2 * torch.rand(256, generator=generator))).double()
    seeded = not spec.startswith("topk")  # top-k is deterministic: it has no seed
    draws = torch.stack([_decode_own(make_codec(f"{spec},seed={seed}" if seeded else spec), x)
                         for seed in range(trials)])
    pooled_se = float(draws.var(dim=0).mean().sqrt()) / trials ** 0.5
    deviation = (draws.mean(dim=0) - x).abs()
    allowed = 6 * pooled_se + 1e-6  # + float32 rounding
    assert float(deviation.max()) <= allowed, \
        f"{spec}: {float(deviation.max()) / pooled_se if pooled_se else float('inf'):.1f} SE off"


def _decode_own(codec, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return to_dense(codec.decode(codec.encode(x), x.numel(), x.dtype), x.numel(), x.dtype)


@pytest.mark.parametrize("spec", ["qsgd:bits=8", "qsgd:bits=4", "qsgd:bits=2",
                                  "randomk:ratio=0.2", "randomk:k=7"])
def test_stochastic_codecs_are_unbiased(spec: str) -> None:
    _assert_unbiased(spec)


def test_topk_without_feedback_is_biased() -> None:
    """The reason error feedback exists, and proof that the unbiasedness check can fail."""
    with pytest.raises(AssertionError, match="SE off"):
        _assert_unbiased("topk:ratio=0.1", trials=20)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 999), steps=st.integers(1, 12),
       spec=st.sampled_from(["topk:ratio=0.05", "topk:ratio=0.2,mode=approx", "qsgd:bits=2"]))
def test_error_feedback_conserves_mass(seed: int, steps: int, spec: str) -> None:
    generator = torch.Generator().manual_seed(seed)
    feedback = ErrorFeedback(make_codec(spec))
    sent = torch.zeros(300, dtype=torch.float64)
    total = torch.zeros(300, dtype=torch.float64)
    for _ in range(steps):
        grad = torch.randn(300, generator=generator)
        payload = feedback.encode("w", grad)
        sent += to_dense(feedback.codec.decode(payload, 300, torch.float32), 300,
                         torch.float32).double()
        total += grad.double()
    torch.testing.assert_close(sent + feedback.residuals["w"].double(), total, rtol=0, atol=1e-5)
    restored = ErrorFeedback(feedback.codec)
    restored.load_state_dict(feedback.state_dict())  # checkpointable
    assert torch.equal(restored.residuals["w"], feedback.residuals["w"])


def test_momentum_correction_conserves_the_corrected_mass() -> None:
    """With momentum m the worker compresses g + m*u (u = m*u + g): what is sent plus the
    residual equals the sum of those Nesterov steps."""
    generator = torch.Generator().manual_seed(0)
    feedback = ErrorFeedback(make_codec("topk:ratio=0.1"), momentum=0.9)
    velocity = torch.zeros(100, dtype=torch.float64)
    sent = torch.zeros(100, dtype=torch.float64)
    steps_total = torch.zeros(100, dtype=torch.float64)
    for _ in range(8):
        grad = torch.randn(100, generator=generator)
        velocity = 0.9 * velocity + grad.double()
        steps_total += grad.double() + 0.9 * velocity
        payload = feedback.encode("w", grad)
        sent += to_dense(feedback.codec.decode(payload, 100, torch.float32), 100,
                         torch.float32).double()
    torch.testing.assert_close(sent + feedback.residuals["w"].double(), steps_total, rtol=0,
                               atol=1e-4)
    with pytest.raises(ValueError, match="momentum"):
        ErrorFeedback(make_codec("topk"), momentum=1.0)


def _corrupt(spec: str, how: str) -> torch.Tensor:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    payload = make_codec(spec).encode(x).clone()
    if how == "truncate":
        return payload[:-3]
    if how == "extend":
        return torch.cat([payload, torch.zeros(4, dtype=torch.uint8)])
    if how == "index":  # topk: last index set to 10**6
        payload[-4:] = torch.tensor([10**6], dtype=torch.int32).view(torch.uint8)
        return payload
    if how == "count":  # topk: claim more values than k
        payload[:8] = torch.tensor([10**6], dtype=torch.int64).view(torch.uint8)
        return payload
    if how == "nan_scale":  # qsgd: first bucket scale NaN
        payload[:4] = torch.tensor([float("nan")]).view(torch.uint8)
        return payload
    if how == "code":  # qsgd 2-bit: code 3 is outside [0, 2]
        payload[-1] = 0xFF
        return payload
    raise AssertionError(how)


@pytest.mark.parametrize("spec, how, match", [
    ("none", "truncate", "truncated"), ("none", "extend", "larger"),
    ("fp16", "truncate", "truncated"), ("topk:ratio=0.05", "truncate", "truncated"),
    ("topk:ratio=0.05", "index", "out of range"), ("topk:ratio=0.05", "count", "claims"),
    ("randomk:ratio=0.05", "extend", "larger"), ("qsgd:bits=8", "nan_scale", "NaN"),
    ("qsgd:bits=4", "truncate", "truncated"), ("qsgd:bits=2", "code", "out of range"),
])
def test_payloads_that_do_not_decode_raise_codec_error(spec: str, how: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        make_codec(spec).decode(_corrupt(spec, how), 1000, torch.float32)


@pytest.mark.parametrize("spec, match", [("qsgd:bits=3", "bits"), ("topk:ratio=2", "ratio"),
                                         ("topk:k=0", "k must"), ("zstd", "unknown codec"),
                                         ("topk:mode=fast", "mode")])
def test_bad_codec_parameters_are_clear_errors(spec: str, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        make_codec(spec)


@settings(max_examples=30, deadline=None)
@given(numel=st.integers(1, 400), min_k=st.integers(1, 64), ratio=st.floats(0.001, 1.0),
       seed=st.integers(0, 99))
def test_topk_min_k_raises_a_ratios_k_and_small_tensors_go_whole(numel: int, min_k: int,
                                                                 ratio: float, seed: int) -> None:
    """Issue #14: k = min(numel, max(ceil(ratio * numel), min_k)); a payload of that many
    values decodes, one more is refused; a tensor of at most min_k elements goes whole."""
    codec = make_codec(f"topk:ratio={ratio},min_k={min_k}")
    plain = make_codec(f"topk:ratio={ratio}")
    k = codec.k_for(numel)  # type: ignore[attr-defined]
    assert k == min(numel, max(plain.k_for(numel), min_k))  # type: ignore[attr-defined]
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)) + 0.5
    update = codec.decode(codec.encode(x), numel, x.dtype)
    assert update.indices.numel() == k  # type: ignore[union-attr]
    if numel <= min_k:
        assert torch.equal(to_dense(update, numel, x.dtype), x)
    if k < numel:  # the limit is what the spec says: a payload of k + 1 values is refused
        with pytest.raises(CodecError):
            codec.decode(make_codec(f"topk:k={k + 1}").encode(x), numel, x.dtype)
