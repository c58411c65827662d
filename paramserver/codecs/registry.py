"""Codec registry: a plain dict from name to factory; duplicates raise, misses list names."""

from __future__ import annotations

from collections.abc import Callable

from paramserver.codecs.base import Codec, CodecError
from paramserver.codecs.dense import Raw, bf16, fp16
from paramserver.codecs.qsgd import QSGD
from paramserver.codecs.sparse import RandomK, TopK
from paramserver.types import CodecSpec

CodecFactory = Callable[[CodecSpec], Codec]
CODECS: dict[str, CodecFactory] = {}
# Codecs whose decode is elementwise and dense: parameters are pulled with them element by
# element, whole, every time.
PULL_CODECS = ("none", "fp16", "bf16")
# Codecs that pull deltas: the server sends the change since the version the worker holds,
# compressed with error feedback kept per codec on the server (server/pull_streams.py).
DELTA_PULL_CODECS = ("topk", "qsgd")


def register(name: str, factory: CodecFactory) -> None:
    if name in CODECS:
        raise ValueError(f"codec {name!r} is already registered")
    CODECS[name] = factory


def codec_names() -> list[str]:
    return sorted(CODECS)


def make_codec(spec: CodecSpec | str) -> Codec:
    """The configured codec for `spec`; CodecError for unknown names or bad parameters."""
    if isinstance(spec, str):
        spec = CodecSpec.parse(spec)
    factory = CODECS.get(spec.name)
    if factory is None:
        raise CodecError(f"unknown codec {spec.name!r}; known: {', '.join(codec_names())}")
    return factory(spec)


for _name, _factory in (("none", Raw), ("fp16", fp16), ("bf16", bf16), ("topk", TopK),
                        ("randomk", RandomK), ("qsgd", QSGD)):
    register(_name, _factory)
