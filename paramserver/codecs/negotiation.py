"""Choose a codec for one direction of one connection from the worker's offers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from paramserver.codecs.base import CodecError
from paramserver.codecs.registry import DELTA_PULL_CODECS, PULL_CODECS, make_codec
from paramserver.errors import FailedPrecondition
from paramserver.types import CodecSpec

DEFAULT_OFFER = (CodecSpec("none"),)
# A top-k pull offer without `k` or `min_k` is answered with this `min_k` (issue #14): a
# pull carries the union of W workers' top-k pushes, which a ratio's k of 1 on a 10-element
# bias cannot; with 16, tensors up to 16 elements go whole (digits, seed 3: 0.927 -> 0.953).
PULL_TOPK_MIN_K = 16


@dataclass(frozen=True)
class CodecLimits:
    """What the server accepts: an allow-list and bounds it adjusts offers into."""

    allowed: tuple[str, ...] = ("none", "fp16", "bf16", "topk", "randomk", "qsgd")
    min_ratio: float = 0.001  # sparsifiers: smallest fraction of values a push may carry
    min_bits: int = 2  # quantisers: fewest bits per value

    def adjust(self, spec: CodecSpec) -> CodecSpec:
        """The offer (already valid: see `negotiate`) moved inside the limits (e.g. a
        smaller ratio raised to min_ratio)."""
        params = dict(spec.params)
        if "ratio" in params and float(params["ratio"]) < self.min_ratio:
            params["ratio"] = f"{self.min_ratio:g}"
        if "bits" in params and int(float(params["bits"])) < self.min_bits:
            params["bits"] = str(self.min_bits)
        return CodecSpec(spec.name, tuple(sorted(params.items())))


def negotiate(direction: str, offers: Sequence[CodecSpec], limits: CodecLimits) -> CodecSpec:
    """The first offer, in the worker's order of preference, that the server accepts,
    adjusted into its limits and in canonical form. An empty list offers only `none`.

    Raises FailedPrecondition naming what each side supports when nothing matches.
    """
    offers = tuple(offers) or DEFAULT_OFFER
    usable = limits.allowed if direction == "push" else tuple(
        n for n in limits.allowed if n in PULL_CODECS + DELTA_PULL_CODECS)
    rejected = []
    for offer in offers:
        if offer.name not in usable:
            rejected.append(f"{offer} (not allowed for {direction})")
            continue
        try:
            make_codec(offer)  # valid as offered: nonsense is refused, never adjusted
            return make_codec(_pull_floor(limits.adjust(offer)) if direction == "pull"
                              else limits.adjust(offer)).spec
        except (CodecError, ValueError) as error:
            rejected.append(f"{offer} ({error})")
    raise FailedPrecondition(
        f"no common {direction} codec: the worker offers [{'; '.join(rejected)}], the server "
        f"allows [{', '.join(usable)}] with ratio >= {limits.min_ratio:g}, "
        f"bits >= {limits.min_bits}")


def _pull_floor(spec: CodecSpec) -> CodecSpec:
    """A top-k pull by ratio without its own `min_k` gets PULL_TOPK_MIN_K."""
    params = dict(spec.params)
    if spec.name != "topk" or "k" in params or "min_k" in params:
        return spec
    params["min_k"] = str(PULL_TOPK_MIN_K)
    return CodecSpec(spec.name, tuple(sorted(params.items())))
