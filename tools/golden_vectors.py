"""Regenerate the golden codec vectors under tests/golden/ (docs/wire.md, "Golden vectors").

Each case is an input tensor and a codec -> the exact payload bytes and the decoded tensor,
as JSON, so an implementation in any language can test itself against ours. Inputs are
written out literally (never drawn from torch), and the only randomness is SplitMix64, so
the files depend on nothing but the codecs. tests/unit/test_golden_vectors.py fails when
the committed files differ from what this script produces.

    python tools/golden_vectors.py [--out DIR]     (with the repository on the import path)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from paramserver.codecs import SparseUpdate, make_codec
from paramserver.codecs.base import to_dense
from paramserver.codecs.splitmix import splitmix64_at, uniform_below
from paramserver.types import CodecSpec

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path("tests") / "golden"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64}
UNIFORM_SEED = 2024  # qsgd's rounding draws: uniforms(UNIFORM_SEED, numel)


@dataclass(frozen=True)
class Case:
    name: str
    codec: str  # as offered; the file records the canonical spec the handshake answers
    dtype: str
    values: Sequence[float | int]
    note: str
    encoder_params: dict[str, str] = field(default_factory=dict)  # local, never on the wire


def _ramp(n: int, scale: float) -> list[float]:
    """n deterministic values in (-scale, scale): a sine with an irrational step."""
    return [scale * math.sin(1.7 * i + 0.3) for i in range(n)]


CASES = (
    Case("none_float32", "none", "float32",
         [1.0, -2.5, 0.0, -0.0, 3.4028234663852886e38, 1e-45, 0.1],
         "raw little-endian float32, -0.0 and a subnormal included"),
    Case("none_int64", "none", "int64", [0, 1, -1, 2**40, -(2**62)],
         "raw little-endian int64 (two's complement)"),
    Case("fp16_float32", "fp16", "float32",
         [1.0, -2.5, 0.1, 65504.0, 70000.0, 1e-8, 1.00048828125, 1.00146484375],
         "round to nearest even: 70000 overflows to inf, 1e-8 to +0, ties go to even"),
    Case("bf16_float32", "bf16", "float32",
         [1.0, -2.5, 0.1, 1.00390625, 1.01171875, 3e38],
         "bfloat16 = the top 16 bits of float32 after round to nearest even"),
    Case("fp16_float64", "fp16", "float64", [0.333333333333, -1e5, 6.1e-5],
         "float64 tensors cast directly to float16"),
    Case("qsgd_bits8_bucket4_float32", "qsgd:bits=8,bucket=4", "float32",
         [0.5, -1.0, 0.25, 0.3, 0.0, 0.0, 0.0, 0.0, 2.0, -0.7],
         "3 buckets (the last one short, the middle one all zero: scale 0, codes 127)"),
    Case("qsgd_bits4_bucket4_float32", "qsgd:bits=4,bucket=4", "float32",
         [0.9, -0.45, 0.3, -0.1, 1.5, 0.2, -1.5],
         "two codes per byte, element 2j in the low nibble; odd count: last high nibble 0"),
    Case("qsgd_bits2_bucket3_float64", "qsgd:bits=2,bucket=3", "float64", _ramp(10, 3.0),
         "four codes per byte, element 4j in bits 0-1; float64 input is quantised as float32"),
    Case("qsgd_bits8_default_bucket_float32", "qsgd:bits=8", "float32", _ramp(520, 1.0),
         "the default bucket of 512: two buckets, the second of 8 elements"),
    Case("topk_ratio_float32", "topk:ratio=0.3", "float32",
         [0.1, -0.9, 0.2, 0.05, 0.7, -0.3, 0.0, 0.25, -0.8, 0.15],
         "k = ceil(0.3 * 10) = 3; 12 value bytes, 4 pad bytes, int32 indices ascending"),
    Case("topk_k2_float64", "topk:k=2", "float64", [1.5, -3.0, 0.5, 2.5, -0.25, 0.0],
         "fixed k; float64 values need no padding"),
    Case("topk_approx_float16", "topk:ratio=0.25,mode=approx", "float16",
         [0.5, -0.125, 2.0, 0.25, -1.5, 0.0625, 1.0, -0.75, 0.375],
         "mode=approx is exact up to 20000 elements; 6 value bytes then 2 pad bytes"),
    Case("topk_min_k_float32", "topk:ratio=0.1,min_k=4", "float32",
         [0.1, -0.9, 0.2, 0.05, 0.7, -0.3, 0.0, 0.25, -0.8, 0.15],
         "k = min(10, max(4, ceil(0.1 * 10))) = 4: min_k raises the ratio's k of 1 to 4"),
    Case("topk_empty_float32", "topk:ratio=0.1", "float32", [],
         "an empty tensor: count 0 and nothing else"),
    Case("randomk_ratio_float32", "randomk:ratio=0.25", "float32", _ramp(20, 1.0),
         "k = 5 indices from SplitMix64(payload seed); values scaled by 20/5 = 4",
         {"seed": "7"}),
    Case("randomk_k3_float64", "randomk:k=3", "float64", [1.0, -2.0, 4.0],
         "k = numel = 3 draws with replacement: index 2 is drawn twice, and its two values add up",
         {"seed": "3"}),
    Case("randomk_ratio_bfloat16", "randomk:ratio=0.5", "bfloat16",
         [0.5, -0.25, 1.0, 0.75, -1.5, 2.0, 0.125, -0.5],
         "scale 8/4 = 2, the product rounded once to bfloat16", {"seed": "99"}),
)


def uniforms(seed: int, count: int) -> torch.Tensor:
    """The float32 draws (top 24 bits of SplitMix64(seed) outputs 0, 1, ... / 2**24)."""
    return torch.tensor([(splitmix64_at(seed, i) >> 40) / 2**24 for i in range(count)],
                        dtype=torch.float32)


def _hex(t: torch.Tensor) -> str:
    return bytes(t.contiguous().view(-1).view(torch.uint8).tolist()).hex()


def _numbers(t: torch.Tensor) -> list[Any]:
    """Exact values for reading; non-finite floats as strings (JSON has no inf/nan)."""
    if not t.dtype.is_floating_point:
        return [int(v) for v in t.tolist()]
    return [v if math.isfinite(v) else str(v) for v in t.double().tolist()]


def vector(case: Case) -> dict[str, Any]:
    """One case: the codec's canonical spec, the input, the payload and the decoded tensor."""
    dtype = DTYPES[case.dtype]
    x = torch.tensor(list(case.values), dtype=dtype)
    offered = CodecSpec.parse(case.codec)
    codec = make_codec(CodecSpec(offered.name, tuple(sorted(
        (*offered.params, *case.encoder_params.items())))))
    out: dict[str, Any] = {"name": case.name, "note": case.note, "codec": str(codec.spec),
                           "encoder_params": case.encoder_params, "dtype": case.dtype,
                           "numel": x.numel(), "input": _numbers(x), "input_hex": _hex(x)}
    if codec.spec.name == "qsgd":
        draws = uniforms(UNIFORM_SEED, x.numel())
        out["uniforms"] = _numbers(draws)
        payload = codec.encode_with(x, draws)  # type: ignore[attr-defined]
    else:
        payload = codec.encode(x)
        if codec.spec.name == "randomk":
            out["payload_seed"] = int(payload[:8].view(torch.int64)[0])
    update = codec.decode(payload, x.numel(), dtype)
    decoded = to_dense(update, x.numel(), dtype)
    out.update(payload_nbytes=payload.numel(), payload_hex=_hex(payload),
               decoded=_numbers(decoded), decoded_hex=_hex(decoded))
    if isinstance(update, SparseUpdate):
        out["sparse"] = {"indices": update.indices.tolist(), "values": _numbers(update.values)}
    return out


def splitmix_vectors() -> dict[str, Any]:
    """Test values for the generator itself and for random-k's index draw."""
    return {
        "note": "SplitMix64 output c from state seed (docs/wire.md); uniform_below(seed, n, k) "
                "are random-k's indices",
        "outputs": [{"seed": s, "first": [f"{splitmix64_at(s, c):016x}" for c in range(4)]}
                    for s in (0, 1, 12345, 2**63 - 1)],
        "uniform_below": [{"seed": s, "n": n, "k": k,
                           "indices": [int(v) for v in uniform_below(s, n, k)]}
                          for s, n, k in ((0, 10, 8), (42, 1000, 8), (7, 25_000_000, 5),
                                          (7, 3 << 62, 6))],
    }


def render(data: dict[str, Any]) -> str:
    """JSON with one top-level key per line and compact values (short, diffable files)."""
    lines = [f" {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def generate(out_dir: Path) -> list[Path]:
    """Write every vector under `out_dir`/tests/golden/; return the files written."""
    folder = out_dir / GOLDEN / "codecs"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case in CASES:
        path = folder / f"{case.name}.json"
        path.write_text(render(vector(case)))
        written.append(path)
    path = out_dir / GOLDEN / "splitmix64.json"
    path.write_text(render(splitmix_vectors()))
    return [*written, path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="output root (default: repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
