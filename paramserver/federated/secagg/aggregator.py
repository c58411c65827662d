"""The server's side of one secure-aggregation round (pure: the caller decides when each
stage closes). It only ever holds masked vectors; `sum()` removes the masks from their sum.

Unmasking (Bonawitz et al. 2017, section 4, round 4): with U2 the clients that shared keys
and U3 those whose masked input arrived,

    sum_{u in U3} x_u = sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
                        - sum_{v in U2 \\ U3} sum_{u in U3 & N(v)} (+-PRG(s_uv))

(pairwise masks between two survivors cancel). b_u and the dropouts' mask keys come back
from t revealed Shamir shares each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from paramserver.federated.secagg import graph, masks, shamir
from paramserver.federated.secagg.protocol import (
    AdvertisedKeys,
    RevealedShare,
    RoundParams,
    SecAggAborted,
    threshold_for,
)
from paramserver.federated.secagg.quantize import Quantizer

VectorHook = Callable[[str, np.ndarray], None]


class Aggregation:
    """One round. `on_vector(client, vector)` sees every vector the server receives (a test
    hook: it proves none of them is a client's update)."""

    def __init__(self, round_: int, length: int, clip: float, threshold_ratio: float,
                 graph_seed: int, on_vector: VectorHook | None = None,
                 uniform: bool = False) -> None:
        """`uniform`: every client weighs 1, whatever it advertised (a mean, as under
        `--aggregate mean` or DP); the answer to ADVERTISE states each client's weight."""
        self.round, self.length, self.clip = round_, length, clip
        self.uniform = uniform
        self.threshold_ratio, self.graph_seed = threshold_ratio, graph_seed
        self._on_vector = on_vector
        self.keys: dict[str, AdvertisedKeys] = {}
        self.params: RoundParams | None = None
        self._neighbours: dict[str, frozenset[str]] = {}
        self.sealed: dict[str, dict[str, bytes]] = {}  # sender -> holder -> ciphertext
        self.masked: dict[str, np.ndarray] = {}
        self.survivors: frozenset[str] = frozenset()
        self.revealed: dict[str, tuple[RevealedShare, ...]] = {}  # holder -> its shares

    # ---- ADVERTISE ---------------------------------------------------------------------

    def advertise(self, keys: AdvertisedKeys) -> None:
        if len(keys.cipher_key) != masks.KEY_BYTES or len(keys.mask_key) != masks.KEY_BYTES:
            raise SecAggAborted(f"public keys are {masks.KEY_BYTES} bytes each")
        if keys.weight < 1:
            raise SecAggAborted(f"a weight is a positive integer, got {keys.weight}")
        self.keys[keys.client_id] = dataclasses.replace(keys, weight=1) if self.uniform else keys

    def close_advertise(self) -> RoundParams:
        threshold = threshold_for(len(self.keys), self.threshold_ratio)
        if len(self.keys) < max(threshold, 2):
            raise SecAggAborted(f"{len(self.keys)} clients advertised keys; secure "
                                f"aggregation needs {max(threshold, 2)}")
        total = sum(k.weight for k in self.keys.values())
        try:
            levels = Quantizer.for_total_weight(self.clip, total).levels
        except ValueError as error:
            raise SecAggAborted(str(error)) from None
        self.params = RoundParams(self.round, tuple(self.keys[c] for c in sorted(self.keys)),
                                  threshold, self.clip, levels, self.graph_seed)
        self._neighbours = graph.neighbours(self.keys, self.graph_seed, self.round)
        return self.params

    def params_for(self, client: str) -> RoundParams:
        """The answer to `client`: every participant's id (the graph and the Shamir points
        need them all), but keys and weight only of its neighbours and itself, so that its
        download grows with k ~ log n, not with n."""
        assert self.params is not None
        near = self._neighbours.get(client, frozenset()) | {client}
        return dataclasses.replace(self.params, participants=tuple(
            k if k.client_id in near else AdvertisedKeys(k.client_id, b"", b"", 0)
            for k in self.params.participants))

    # ---- SHARE_KEYS --------------------------------------------------------------------

    def share_keys(self, client: str, sealed: dict[str, bytes]) -> None:
        if set(sealed) != self._neighbours.get(client, frozenset()):
            raise SecAggAborted(f"{client!r} must send one ciphertext to each neighbour")
        self.sealed[client] = dict(sealed)

    def inbox(self, client: str) -> dict[str, bytes]:
        """The ciphertexts addressed to `client` (after SHARE_KEYS closed)."""
        return {sender: to[client] for sender, to in self.sealed.items() if client in to}

    # ---- MASKED_INPUT ------------------------------------------------------------------

    def masked_input(self, client: str, vector: np.ndarray) -> None:
        if client not in self.sealed:
            raise SecAggAborted(f"{client!r} did not share its keys this round")
        if vector.dtype != np.uint32 or vector.shape != (self.length,):
            raise SecAggAborted(f"a masked input is {self.length} uint32, got "
                                f"{vector.dtype} {vector.shape}")
        if self._on_vector is not None:
            self._on_vector(client, vector)
        self.masked[client] = vector

    def close_masked(self) -> frozenset[str]:
        assert self.params is not None
        self.survivors = frozenset(self.masked)
        if len(self.survivors) < self.params.threshold:
            raise SecAggAborted(f"{len(self.survivors)} masked inputs arrived, fewer than the "
                                f"threshold {self.params.threshold}")
        return self.survivors

    # ---- UNMASK ------------------------------------------------------------------------

    def unmask(self, client: str, revealed: tuple[RevealedShare, ...]) -> None:
        if client not in self.survivors:
            raise SecAggAborted(f"{client!r} is not a survivor of this round")
        for share in revealed:  # never both secrets of one client
            if share.mask_key == (share.owner in self.survivors):
                raise SecAggAborted(f"{client!r} revealed the wrong secret of {share.owner!r}")
        self.revealed[client] = revealed

    def sum(self) -> tuple[np.ndarray, int]:
        """The survivors' weighted mean (float64) and their total weight; SecAggAborted
        when some secret has fewer than t revealed shares."""
        assert self.params is not None
        total = np.zeros(self.length, dtype=np.uint32)
        for vector in self.masked.values():
            total += vector
        for u in sorted(self.survivors):
            total -= masks.prg(self._secret(u, mask_key=False), self.length)
        for v in sorted(set(self.sealed) - self.survivors):
            private = self._secret(v, mask_key=True)
            if masks.public_of(private) != self.keys[v].mask_key:
                raise SecAggAborted(f"the shares of {v!r}'s mask key are inconsistent")
            for u in sorted(self._neighbours[v] & self.survivors):
                pair = masks.prg(masks.agree(private, self.keys[u].mask_key, masks.MASK_INFO),
                                 self.length)
                total = total - pair if u < v else total + pair  # u added +pair iff u < v
        weight = sum(self.keys[u].weight for u in self.survivors)
        return self.params.quantizer.decode(total, weight), weight

    def _secret(self, owner: str, mask_key: bool) -> bytes:
        assert self.params is not None
        points = graph.points(self.keys)
        shares = {points[holder]: shamir.share_from_bytes(s.share)
                  for holder, revealed in self.revealed.items()
                  for s in revealed if s.owner == owner and s.mask_key == mask_key}
        if len(shares) < self.params.threshold:
            what = "mask key" if mask_key else "self-mask seed"
            raise SecAggAborted(f"{len(shares)} shares of {owner!r}'s {what} revealed, "
                                f"threshold {self.params.threshold}")
        return shamir.combine(dict(sorted(shares.items())[:self.params.threshold]))
