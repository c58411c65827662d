"""The records of a Step call (issue #14, docs/wire.md section 5f): a small model's push and
its pull in one message each way.

A step of a 40 KB model on the streams costs 5-6 messages per RPC and two RPCs; gRPC's own
per-message work was ~65% of the server's Python time, and the bare stream round of those
messages alone was 4.5x a unary echo of the same bytes. One unary call moves the same
records (push header and chunks, pull header and chunks) in one message each way.
"""

from __future__ import annotations

from dataclasses import dataclass

from paramserver.types import PushResult
from paramserver.wire import Chunk


@dataclass(frozen=True)
class StepCall:
    """The request: a whole push, as the messages of a Push stream, and what to pull after it.

    `push` holds what a Push stream would carry, in order: a `PushHeader`, then `wire.Chunk`s
    (and, when a message did not decode, a `serde.MalformedMessage`), so the server checks it
    in the very same sequence (`server/intake.py`). The pull is served at version >=
    max(`min_version`, the version in the push's answer)."""

    push: tuple[object, ...]
    min_version: int = 0
    tensors: tuple[str, ...] = ()  # names to pull; empty: every tensor
    held_version: int = -1  # delta pull codecs: the pull-stream version held (-1: none)

    @property
    def payload_nbytes(self) -> int:
        """The push's chunk payload bytes (what --max-step-call-bytes bounds)."""
        return sum(m.data.nbytes for m in self.push if isinstance(m, Chunk))


@dataclass(frozen=True)
class StepAnswer:
    """The answer: the push's `PushResult` and the pull's messages, as a Pull stream carries
    them (server: encoded PullResponse messages; client: the decoded header, then chunks)."""

    push: PushResult
    pull: tuple[object, ...]
