"""Compression codecs: a registry by name and per-connection negotiation.

Only `none` exists so far; the codecs issue (#4) adds top-k, random-k, quantisation and
casts behind the same registry, and the handshake already carries the offers.
"""

from paramserver.codecs.negotiation import negotiate
from paramserver.codecs.registry import KNOWN_CODECS, codec_names

__all__ = ["KNOWN_CODECS", "codec_names", "negotiate"]
