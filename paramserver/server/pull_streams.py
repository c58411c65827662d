"""Compressed pulls: the parameters each delta codec's workers hold, and the one encoded delta
of the newest version that all of them receive.

A worker pulling with a delta codec (top-k, qsgd) does not get the parameters theta; it gets
the change since the version it holds, compressed with error feedback kept on the server
(the server side of DoubleSqueeze, Tang et al. 2019). Per codec the server keeps a replica
theta_hat of what those workers hold and, once per version, encodes
    c_v = C(theta_v - theta_hat_prev);  theta_hat_v = theta_hat_prev + decode(c_v)
so the residual e = theta - theta_hat is the error feedback, and every worker of the codec
holds exactly theta_hat (both sides add the same decoded values). A worker that holds
another version (a first pull, a rejoin, an async worker that skipped versions) gets
theta_hat_v whole, as raw bytes.

The delta is made a piece at a time as the first reader reaches it (qsgd's streaming
encoder, codecs/streaming.py): the pulls of one version send piece i while piece i + 1 is
encoded, each piece is added to the replica as it is made, and every pull reads the same
bytes, encoded once. A delta still being made is finished before the next version's (or a
whole pull's) replica is read.

Bound: each element of a worker's parameters differs from the server's by the residual,
which the next delta starts from: for top-k by at most the smallest magnitude that delta
sends (every larger one was sent); for qsgd by at most its bucket's scale / levels.
Memory per delta codec in use (at most `MAX_STREAMS`): the replica (one model copy), the
newest encoded delta (for 8-bit qsgd about a quarter of the model, plus 4 bytes per bucket
of 512), and for a streaming codec the residual the delta is made from (one model copy,
kept and reused from version to version); a non-streaming codec's residual lives only
while its delta is encoded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from paramserver.codecs import Codec
from paramserver.codecs.base import add_into, to_dense
from paramserver.codecs.qsgd import QSGD
from paramserver.codecs.streaming import StreamedPayload
from paramserver.errors import ResourceExhausted
from paramserver.server.store import ParameterStore
from paramserver.types import CodecSpec, TensorSpec

MAX_STREAMS = 4  # distinct delta codecs served at once: each costs one model copy


@dataclass(frozen=True)
class Served:
    """What one pull sends: per tensor, a delta payload or the replica's raw values."""

    version: int
    delta_from: int  # -1: whole values
    payloads: dict[str, StreamedPayload]  # name -> its bytes, made as they are read


class PullStream:
    """The replica and newest delta of one delta codec; `_lock` guards both."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._lock = threading.Lock()
        self.replica: dict[str, torch.Tensor] = {}  # flat, by tensor name
        self.version = -1  # the version the replica stands for
        self._delta_from = -1  # the version the newest delta starts from
        self._delta: dict[str, StreamedPayload] = {}  # its payload per tensor
        self._residuals: dict[str, torch.Tensor] = {}  # what a streamed delta is made from

    def serve(self, store: ParameterStore, specs: tuple[TensorSpec, ...],
              held_version: int) -> Served:
        """Bring the replica to the store's version (encoding its delta once), then answer
        a worker that holds `held_version`."""
        with self._lock:
            self._advance(store)
            if self._delta and held_version == self._delta_from >= 0:
                return Served(self.version, self._delta_from,
                              {s.name: self._delta[s.name] for s in specs})
            self._finish_delta()  # the replica whole at its version
            # A copy: a later version's delta updates the replica in place.
            return Served(self.version, -1,
                          {s.name: StreamedPayload.ready(
                              self.replica[s.name].clone().view(torch.uint8))
                           for s in specs})

    def _finish_delta(self) -> None:
        """Make the rest of the newest delta (and so add it to the replica)."""
        for payload in self._delta.values():
            payload.complete()

    def _advance(self, store: ParameterStore) -> None:
        if store.version == self.version:  # read without the lock: rechecked under it
            return
        self._finish_delta()  # its residuals are reused below
        with store.lock:
            if store.version == self.version:
                return
            version = store.version
            if not self.replica:  # the first pull: the replica starts equal to the parameters
                self.replica = {n: p.detach().reshape(-1).clone() for n, p in store.params.items()}
                self.version = version
                return
            # theta_v - theta_hat_prev in one pass per tensor (no copy of theta first);
            # qsgd's finds its scales in the same pass and makes its codes later.
            made = {n: self._delta_of(n, p.detach().reshape(-1))
                    for n, p in store.params.items()}
        self._delta = {n: d if isinstance(d, StreamedPayload) else self._encode(n, d)
                       for n, d in made.items()}
        self._delta_from, self.version = self.version, version

    def _delta_of(self, name: str, param: torch.Tensor) -> StreamedPayload | torch.Tensor:
        """A streamed delta (made later, as pulls read it), or the residual to encode."""
        replica = self.replica[name]
        if not (isinstance(self.codec, QSGD) and param.device.type == "cpu"
                and param.dtype == torch.float32):
            return torch.sub(param, replica)
        codec = self.codec
        if name not in self._residuals:  # reused every version
            self._residuals[name] = torch.empty_like(replica)

        def add_piece(start: int, codes: np.ndarray, scales: torch.Tensor) -> None:
            codec.add_codes(replica[start:start + codes.size], codes, scales, start)
        return codec.stream_encode(param, after=add_piece, minus=replica,
                                   into=self._residuals[name])

    def _encode(self, name: str, residual: torch.Tensor) -> StreamedPayload:
        payload = self.codec.encode(residual)
        # Sparse deltas are added where they land.
        add_into(self.replica[name], self.codec.decode(payload, residual.numel(),
                                                       residual.dtype))
        return StreamedPayload.ready(payload)

    def last_sent_magnitudes(self) -> dict[str, float]:
        """Per tensor, the smallest magnitude the newest delta carries (decoded); with
        top-k every element of the residual is at most this (tests check the bound)."""
        with self._lock:
            self._finish_delta()
            out = {}
            for name, streamed in self._delta.items():
                payload = streamed.complete()
                numel, dtype = self.replica[name].numel(), self.replica[name].dtype
                sent = to_dense(self.codec.decode(payload, numel, dtype), numel, dtype)
                nonzero = sent.abs()[sent != 0]
                out[name] = float(nonzero.min()) if nonzero.numel() else 0.0
            return out

    def residual(self, store: ParameterStore) -> dict[str, torch.Tensor]:
        """theta - theta_hat per tensor (for tests and the bound)."""
        with self._lock:
            self._finish_delta()
        with self._lock, store.lock:
            return {n: p.detach().reshape(-1) - self.replica[n] for n, p in store.params.items()}


class PullStreams:
    """One `PullStream` per delta codec spec, created on first use; `_lock` guards the map."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._streams: dict[CodecSpec, PullStream] = {}

    def for_codec(self, codec: Codec) -> PullStream:
        with self._lock:
            stream = self._streams.get(codec.spec)
            if stream is None:
                if len(self._streams) >= self._limit:
                    raise ResourceExhausted(
                        f"this server already serves {self._limit} delta pull codecs "
                        f"({', '.join(map(str, self._streams))}); pull with one of them")
                stream = self._streams[codec.spec] = PullStream(codec)
            return stream

    def streams(self) -> Mapping[CodecSpec, PullStream]:
        with self._lock:
            return dict(self._streams)

