"""Choose a codec for one direction of one connection from the worker's offers."""

from __future__ import annotations

from collections.abc import Sequence

from paramserver.codecs.registry import KNOWN_CODECS
from paramserver.errors import FailedPrecondition
from paramserver.types import CodecSpec

DEFAULT_OFFER = (CodecSpec("none"),)


def negotiate(direction: str, offers: Sequence[CodecSpec], allowed: Sequence[str]) -> CodecSpec:
    """The first offer (in the worker's order of preference) that the server allows.

    An empty offer list means the worker only speaks `none`. Raises FailedPrecondition
    naming what each side supports when nothing matches.
    """
    offers = tuple(offers) or DEFAULT_OFFER
    for offer in offers:
        accepted = KNOWN_CODECS.get(offer.name)
        if offer.name in allowed and accepted is not None:
            unknown = {key for key, _ in offer.params} - accepted
            if not unknown:
                return offer
    raise FailedPrecondition(
        f"no common {direction} codec: the worker offers "
        f"[{', '.join(str(o) for o in offers)}], the server allows [{', '.join(allowed)}]"
    )
