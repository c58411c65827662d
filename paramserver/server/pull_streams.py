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

Bound: each element of a worker's parameters differs from the server's by the residual,
which the next delta starts from: for top-k by at most the smallest magnitude that delta
sends (every larger one was sent); for qsgd by at most its bucket's scale / levels.
Memory: one model copy (the replica) per delta codec in use, at most `MAX_STREAMS`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from paramserver.codecs import Codec
from paramserver.codecs.base import add_into, to_dense
from paramserver.errors import ResourceExhausted
from paramserver.server.store import ParameterStore
from paramserver.types import CodecSpec, TensorSpec

MAX_STREAMS = 4  # distinct delta codecs served at once: each costs one model copy


@dataclass(frozen=True)
class Served:
    """What one pull sends: per tensor, a delta payload or the replica's raw values."""

    version: int
    delta_from: int  # -1: whole values
    payloads: dict[str, torch.Tensor]  # name -> 1-D uint8


class PullStream:
    """The replica and newest delta of one delta codec; `_lock` guards both."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._lock = threading.Lock()
        self.replica: dict[str, torch.Tensor] = {}  # flat, by tensor name
        self.version = -1  # the version the replica stands for
        self._delta_from = -1  # the version the newest delta starts from
        self._delta: dict[str, torch.Tensor] = {}  # its payload per tensor

    def serve(self, store: ParameterStore, specs: tuple[TensorSpec, ...],
              held_version: int) -> Served:
        """Bring the replica to the store's version (encoding its delta once), then answer
        a worker that holds `held_version`."""
        with self._lock:
            self._advance(store)
            if self._delta and held_version == self._delta_from >= 0:
                return Served(self.version, self._delta_from,
                              {s.name: self._delta[s.name] for s in specs})
            # A copy: a later version's delta updates the replica in place.
            return Served(self.version, -1,
                          {s.name: self.replica[s.name].clone().view(torch.uint8)
                           for s in specs})

    def _advance(self, store: ParameterStore) -> None:
        with store.lock:
            if store.version == self.version:
                return
            version = store.version
            if not self.replica:  # the first pull: the replica starts equal to the parameters
                self.replica = {n: p.detach().reshape(-1).clone() for n, p in store.params.items()}
                self.version = version
                return
            # theta_v - theta_hat_prev in one pass per tensor (no copy of theta first).
            residuals = {n: torch.sub(p.detach().reshape(-1), self.replica[n])
                         for n, p in store.params.items()}
        delta = {}
        for name, residual in residuals.items():
            payload = self.codec.encode(residual)
            # Sparse deltas are added where they land; only qsgd's are dense.
            add_into(self.replica[name], self.codec.decode(payload, residual.numel(),
                                                           residual.dtype))
            delta[name] = payload
        self._delta, self._delta_from, self.version = delta, self.version, version

    def last_sent_magnitudes(self) -> dict[str, float]:
        """Per tensor, the smallest magnitude the newest delta carries (decoded); with
        top-k every element of the residual is at most this (tests check the bound)."""
        with self._lock:
            out = {}
            for name, payload in self._delta.items():
                numel, dtype = self.replica[name].numel(), self.replica[name].dtype
                sent = to_dense(self.codec.decode(payload, numel, dtype), numel, dtype)
                nonzero = sent.abs()[sent != 0]
                out[name] = float(nonzero.min()) if nonzero.numel() else 0.0
            return out

    def residual(self, store: ParameterStore) -> dict[str, torch.Tensor]:
        """theta - theta_hat per tensor (for tests and the bound)."""
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

