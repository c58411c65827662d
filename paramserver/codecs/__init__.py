"""Compression codecs: one module per family, a registry by name, per-connection negotiation.

Spec strings name a codec and its parameters: `none`, `fp16`, `bf16`, `topk:ratio=0.01`
(`mode=approx` for the sampled threshold), `randomk:ratio=0.01`, `qsgd:bits=4`. Every payload is defined byte by byte in docs/wire.md.
"""

from paramserver.codecs.base import Codec, CodecError, DenseUpdate, SparseUpdate, Update
from paramserver.codecs.error_feedback import ErrorFeedback
from paramserver.codecs.negotiation import CodecLimits, negotiate
from paramserver.codecs.registry import DELTA_PULL_CODECS, PULL_CODECS, codec_names, make_codec

__all__ = ["DELTA_PULL_CODECS", "PULL_CODECS", "Codec", "CodecError", "CodecLimits", "DenseUpdate", "ErrorFeedback",
           "SparseUpdate", "Update", "codec_names", "make_codec", "negotiate"]
