"""The Python codecs against the golden vectors of docs/wire.md (tests/golden/), and the
random-k generator against the constants the spec lists."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from paramserver.codecs import SparseUpdate, make_codec
from paramserver.codecs.base import to_dense
from paramserver.codecs.sparse import RandomK
from paramserver.codecs.splitmix import splitmix64, splitmix64_at, uniform_below
from paramserver.types import CodecSpec

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
VECTORS = sorted((GOLDEN / "codecs").glob("*.json"))
SPEC = REPO / "docs" / "wire.md"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64}

# docs/wire.md, "Random-k indices": SplitMix64 outputs 0..2 from state 0 and from 12345
# (state 0 matches Vigna's reference splitmix64.c), and random-k draws.
SPLITMIX_0 = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)
SPLITMIX_12345 = (0x22118258A9D111A0, 0x346EDCE5F713F8ED, 0x1E9A57BC80E6721D)
UNIFORM_BELOW = {(0, 10, 8): [5, 0, 9, 4, 7, 0, 3, 0],
                 (42, 1000, 8): [413, 291, 858, 764, 250, 62, 925, 908]}


def _load_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("golden_tool",
                                                  REPO / "tools" / "golden_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _tensor(hex_bytes: str, dtype: str) -> torch.Tensor:
    raw = torch.tensor(list(bytes.fromhex(hex_bytes)), dtype=torch.uint8)
    return raw.view(DTYPES[dtype])


def _hex(t: torch.Tensor) -> str:
    return bytes(t.contiguous().view(-1).view(torch.uint8).tolist()).hex()


def test_vectors_are_fresh(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text() for p in _load_tool().generate(tmp_path)}
    committed = {p.relative_to(REPO): p.read_text() for p in GOLDEN.rglob("*.json")}
    assert set(fresh) == set(committed), "golden file set differs: run tools/golden_vectors.py"
    stale = sorted(str(name) for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale golden vectors {stale}: run tools/golden_vectors.py and commit"


def test_every_codec_has_vectors() -> None:
    names = {json.loads(p.read_text())["codec"].split(":")[0] for p in VECTORS}
    assert names == {"none", "fp16", "bf16", "qsgd", "topk", "randomk"}


def _encode(case: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    spec = CodecSpec.parse(case["codec"])
    codec = make_codec(CodecSpec(spec.name, tuple(sorted(
        (*spec.params, *case["encoder_params"].items())))))
    if spec.name == "qsgd":
        draws = torch.tensor(case["uniforms"], dtype=torch.float32)
        return codec.encode_with(x, draws)  # type: ignore[attr-defined]
    return codec.encode(x)


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_codec_encodes_to_the_golden_bytes(path: Path) -> None:
    case = json.loads(path.read_text())
    x = _tensor(case["input_hex"], case["dtype"])
    assert x.numel() == case["numel"]
    payload = _encode(case, x)
    assert _hex(payload) == case["payload_hex"]
    assert payload.numel() == case["payload_nbytes"]
    if case["codec"].startswith("randomk"):  # the payload seed alone fixes the bytes
        codec = make_codec(case["codec"])
        assert _hex(codec.encode_with_seed(x, case["payload_seed"])) == case["payload_hex"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_golden_bytes_decode_to_the_stated_tensor(path: Path) -> None:
    case = json.loads(path.read_text())
    dtype = DTYPES[case["dtype"]]
    payload = torch.tensor(list(bytes.fromhex(case["payload_hex"])), dtype=torch.uint8)
    update = make_codec(case["codec"]).decode(payload, case["numel"], dtype)
    assert _hex(to_dense(update, case["numel"], dtype)) == case["decoded_hex"]
    if "sparse" in case:
        assert isinstance(update, SparseUpdate)
        assert update.indices.tolist() == case["sparse"]["indices"]


def test_splitmix64_matches_the_spec_constants() -> None:
    assert tuple(splitmix64_at(0, c) for c in range(3)) == SPLITMIX_0
    assert tuple(splitmix64_at(12345, c) for c in range(3)) == SPLITMIX_12345
    text = SPEC.read_text()
    for value in (*SPLITMIX_0, *SPLITMIX_12345):
        assert f"{value:016x}" in text, f"docs/wire.md lost the test value {value:016x}"
    for (seed, n, k), indices in UNIFORM_BELOW.items():
        assert [int(v) for v in uniform_below(seed, n, k)] == indices
        assert str(indices) in text


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**63 - 1, 2**64 - 1])
def test_vectorised_generator_equals_the_scalar_reference(seed: int) -> None:
    counters = np.arange(0, 3000, dtype=np.uint64)
    assert [int(v) for v in splitmix64(seed, counters)] == \
        [splitmix64_at(seed, c) for c in range(3000)]


def _uniform_below_reference(seed: int, n: int, k: int) -> list[int]:
    """The spec's pseudo-code, one output at a time."""
    limit, counter = (1 << 64) - (1 << 64) % n, 0
    out: list[int] = []
    while len(out) < k:
        z = splitmix64_at(seed, counter)
        counter += 1
        if z < limit:
            out.append(z % n)
    return out


@pytest.mark.parametrize("n", [1, 7, 1000, 25_000_000, 2**32 + 15, 3 << 62])
def test_uniform_below_follows_the_pseudo_code_rejections_included(n: int) -> None:
    # n = 3 * 2**62 rejects a quarter of the outputs: it exercises the rejection path.
    assert [int(v) for v in uniform_below(99, n, 200)] == _uniform_below_reference(99, n, 200)


def test_random_k_indices_are_uniform() -> None:
    """Chi-square over 50 bins with 100k draws: 49 degrees of freedom, mean 49, sd 9.9."""
    counts = np.bincount(uniform_below(2024, 50, 100_000).astype(np.int64), minlength=50)
    expected = 100_000 / 50
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 49 + 6 * 9.9


def test_random_k_mean_of_many_decodes_is_the_input() -> None:
    """E[decode] = x exactly: coordinate i is drawn Binomial(k, 1/n) times, each time
    carrying x_i * n / k. Averaged over many payload seeds the error shrinks like 1/sqrt."""
    x = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)
    codec = make_codec("randomk:k=8,seed=5")
    trials = 20_000
    total = torch.zeros_like(x)
    for _ in range(trials):
        total += to_dense(codec.decode(codec.encode(x), 40, x.dtype), 40, x.dtype)
    # Per coordinate: var = x_i**2 * (n/k - 1) <= 4, so the mean's sd is <= 2/sqrt(trials).
    assert float((total / trials - x).abs().max()) < 6 * 2 / trials ** 0.5


def test_random_k_payload_seeds_follow_the_specified_stream() -> None:
    codec = make_codec("randomk:ratio=0.5,seed=7")
    assert isinstance(codec, RandomK)
    seeds = [int(codec.encode(torch.ones(4))[:8].view(torch.int64)[0]) for _ in range(3)]
    assert seeds == [splitmix64_at(7, c) >> 1 for c in range(3)]
