"""Codec registry: a plain dict from name to the parameters the codec accepts."""

from __future__ import annotations

# name -> parameter names it accepts. `none` sends raw little-endian tensor bytes.
KNOWN_CODECS: dict[str, frozenset[str]] = {
    "none": frozenset(),
}


def codec_names() -> list[str]:
    return sorted(KNOWN_CODECS)
