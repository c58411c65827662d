"""The pull side of `ParameterClient`: every shard's parameters into the model's own tensors.

Each shard is pulled on its fan-out thread, through a Pull stream or the Step call's answer
(`workers.step_calls`), straight into the model's tensors (or their pinned host mirrors);
a shard that forgot our session is rejoined and pulled again, one that discarded the step
gets the step's pushes again first (`workers.repush`). `ShardPulls` is a mixin of
`ParameterClient`, like `OneCallSteps`, using the client's state declared below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from paramserver import errors
from paramserver.codecs import DELTA_PULL_CODECS, make_codec
from paramserver.errors import SessionExpired
from paramserver.types import PullRequest, Session
from workers.connection import ServerConnection
from workers.fan_out import ShardFanOut
from workers.payloads import DeltaPullDecoder, PullDecoder
from workers.repush import SentPushes
from workers.routes import ShardRoutes, trainable_keys
from workers.shard_calls import ShardPull
from workers.step_calls import StepCallFetch
from workers.tensor_io import HostMirror


class ShardPulls:
    """`ParameterClient.pull` and the per-shard pulls `step` shares."""

    if TYPE_CHECKING:  # the client's state and calls this mixin uses
        connections: Sequence[ServerConnection]
        sessions: list[Session]
        versions: list[int]
        rejoins: int
        skip_frozen: bool
        _params: Mapping[str, torch.Tensor]
        _mirrors: dict[str, HostMirror]
        _stream_versions: list[int]
        _sent: SentPushes
        _shards: ShardFanOut

        @property
        def version(self) -> int: ...

        def _attached_routes(self) -> ShardRoutes: ...
        def rejoin(self, shard: int, why: str) -> None: ...

    def pull(self, min_version: int | Sequence[int] = 0, timeout_s: float | None = None) -> int:
        """Wait until every shard reaches its min version; copy parameters in place."""
        self._attached_routes()
        wanted = ([min_version] * len(self.connections) if isinstance(min_version, int)
                  else list(min_version))
        targets = self._pull_targets()
        with torch.no_grad():
            self._pulled(self._shards.run(
                lambda shard: self._pull_shard(shard, wanted[shard], targets, timeout_s)))
        return self.version

    def _pull_targets(self) -> dict[str, np.ndarray]:
        return {n: self._mirrors[n].writable_values(p) for n, p in self._params.items()}

    def _pulled(self, pulls: Sequence[ShardPull]) -> None:
        """Every shard's pull landed: note the versions, commit the host mirrors."""
        self.versions = [p.version for p in pulls]
        self.rejoins += sum(p.rejoined for p in pulls)
        for name, param in self._params.items():
            self._mirrors[name].commit(param)
        self._sent.clear()  # the step closed: its pushes are not needed again

    def _pull_shard(self, shard: int, min_version: int, targets: dict[str, np.ndarray],
                    timeout_s: float | None) -> ShardPull:
        """Pull one shard into `targets`; rejoin and pull again if it forgot our session,
        push the step again and pull if it discarded the step (`workers.repush`)."""
        try:
            return ShardPull(self._pull_into(shard, min_version, targets, timeout_s))
        except SessionExpired as error:
            self.rejoin(shard, error.message)
        except errors.StepDiscarded as error:
            self._sent.resend_before_pull(shard, self.connections[shard], error.message)
            return self._pull_shard(shard, min_version, targets, timeout_s)
        version = self._pull_into(shard, min(min_version, self.versions[shard]), targets,
                                  timeout_s)
        return ShardPull(version, rejoined=True)

    def _pull_into(self, shard: int, min_version: int, targets: dict[str, np.ndarray],
                   timeout_s: float | None, fetch: StepCallFetch | None = None) -> int:
        """Pull one shard into `targets` through `fetch` (default: a Pull stream)."""
        codec = make_codec(self.sessions[shard].pull_codec)
        routes = self._attached_routes().by_key(shard)
        delta = codec.spec.name in DELTA_PULL_CODECS
        decoder = (DeltaPullDecoder if delta else PullDecoder)(shard, codec, routes, targets)
        names = tuple(trainable_keys(routes, self._params) if self.skip_frozen else ())
        request = PullRequest(session_id="", min_version=min_version, tensors=names,
                              held_version=self._stream_versions[shard] if delta else -1)
        connection = self.connections[shard]
        header = fetch(request, decoder) if fetch is not None else connection.pull(
            min_version, decoder.sink, names, timeout_s=timeout_s,
            on_header=decoder.on_header, held_version=request.held_version)
        if isinstance(decoder, DeltaPullDecoder):
            decoder.finish()
            self._stream_versions[shard] = header.version
        return header.version
