"""What one server lets a request cost it: the bounds every request is checked against
before anything is allocated (issue #13). Exceeding one is RESOURCE_EXHAUSTED (the server
is full) or INVALID_ARGUMENT (the request is out of range), never INTERNAL.

`LongPolls` bounds how many RPC threads may sit in a long poll (a pull waiting for a
version, an SSP pull held back, a JoinRound), so waiting clients cannot take every thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from paramserver.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from paramserver.types import CodecSpec, ModelLayout


@dataclass(frozen=True)
class ServerLimits:
    max_model_bytes: int = 16 << 30  # one server's (shard's) parameters, all tensors
    max_tensor_rank: int = 8
    max_tensor_numel: int = 1 << 32
    max_worker_id_chars: int = 128
    max_codec_chars: int = 256  # one codec offer written as text (name and parameters)
    max_codec_offers: int = 16  # per direction, per handshake
    max_sessions: int = 1024  # workers and observers; observers are evicted by lease too
    max_long_polls: int = 32  # pulls/JoinRounds waiting at once (the server has 64 threads)
    max_held_part_bytes: int = 4 << 30  # push parts held for unfinished multi-part pushes
    member_idle_s: float = 60.0  # a worker that neither registered nor pushed for this
    # long is not waited for by a sync step or an SSP pull (it stays connected); 0: forever
    max_step_call_bytes: int = 1 << 20  # a Step call's push payload and pulled tensors, each
    # (issue #14); 0: Step not offered, workers push and pull on the streams

    def __post_init__(self) -> None:
        if min(self.max_model_bytes, self.max_tensor_rank, self.max_tensor_numel,
               self.max_worker_id_chars, self.max_codec_chars, self.max_codec_offers,
               self.max_sessions, self.max_long_polls, self.max_held_part_bytes) < 1:
            raise ValueError("every --max-* limit must be at least 1")
        if self.member_idle_s < 0 or self.max_step_call_bytes < 0:
            raise ValueError("--member-idle-timeout and --max-step-call-bytes must be >= 0")

    def check_worker_id(self, worker_id: str) -> None:
        if len(worker_id) > self.max_worker_id_chars:
            raise InvalidArgument(f"worker_id has {len(worker_id)} characters; at most "
                                  f"{self.max_worker_id_chars} (--max-worker-id)")

    def check_offers(self, offers: list[CodecSpec]) -> None:
        if len(offers) > self.max_codec_offers:
            raise InvalidArgument(f"{len(offers)} codec offers; at most "
                                  f"{self.max_codec_offers}")
        for offer in offers:
            length = len(offer.name) + sum(len(k) + len(v) + 2 for k, v in offer.params)
            if length > self.max_codec_chars:
                raise InvalidArgument(f"codec offer of {length} characters; at most "
                                      f"{self.max_codec_chars} (--max-codec-chars)")

    def check_layout(self, layout: ModelLayout) -> None:
        """A model to register: each tensor's rank and size, then the total bytes."""
        for spec in layout.tensors:
            if len(spec.shape) > self.max_tensor_rank:
                raise InvalidArgument(f"tensor {spec.name[:64]!r} has rank {len(spec.shape)}; "
                                      f"at most {self.max_tensor_rank} (--max-tensor-rank)")
            if spec.numel > self.max_tensor_numel:
                raise InvalidArgument(f"tensor {spec.name[:64]!r} has {spec.numel} elements; "
                                      f"at most {self.max_tensor_numel} (--max-tensor-numel)")
        if layout.nbytes > self.max_model_bytes:
            raise ResourceExhausted(f"model of {layout.nbytes} bytes; this server takes at "
                                    f"most {self.max_model_bytes} (--max-model-bytes)")


class LongPoll:
    """One request's long poll: takes a slot of its `LongPolls` the first time it has to
    wait, and ends as soon as its call is cancelled (`cancelled` is set by the servicer's
    termination callback, which also wakes the waiters)."""

    def __init__(self, gate: LongPolls, what: str, cancelled: threading.Event | None) -> None:
        self._gate = gate
        self._what = what
        self._cancelled = cancelled
        self._holding = False
        # Set by the update policy: raises when the wait is pointless (sync: this worker's
        # push was discarded and must be pushed again). Must take no lock of the policy's.
        self.guard: Callable[[], None] | None = None

    def before_wait(self) -> None:
        """Call before each wait: RESOURCE_EXHAUSTED when no slot is free, DEADLINE_EXCEEDED
        when the caller went away, the guard's error when it raises."""
        if self._cancelled is not None and self._cancelled.is_set():
            raise DeadlineExceeded(f"{self._what}: the call was cancelled")
        if self.guard is not None:
            self.guard()
        if not self._holding:
            self._gate.acquire(self._what)
            self._holding = True

    def release(self) -> None:
        if self._holding:
            self._holding = False
            self._gate.release()


class LongPolls:
    """At most `limit` long polls waiting at once; `_lock` guards `_waiting`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def poll(self, what: str, cancelled: threading.Event | None = None) -> Iterator[LongPoll]:
        """A long poll for one request; its slot (if it took one) is freed on exit."""
        poll = LongPoll(self, what, cancelled)
        try:
            yield poll
        finally:
            poll.release()

    def acquire(self, what: str) -> None:
        with self._lock:
            if self._waiting >= self.limit:
                raise ResourceExhausted(f"{what}: {self.limit} long polls are already "
                                        "waiting on this server (--max-long-polls); retry")
            self._waiting += 1

    def release(self) -> None:
        with self._lock:
            self._waiting -= 1

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting
