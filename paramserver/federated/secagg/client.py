"""One client's side of a secure-aggregation round (pure: the caller moves the messages).

    keys = round.advertise()                 # -> server
    sealed = round.share_keys(params)        # -> server: ciphertexts for the neighbours
    masked = round.mask(inbox, encoded)      # -> server: y_u = x_u + PRG(b_u) + sum +-PRG(s_uv)
    revealed = round.unmask(survivors)       # -> server: shares for survivors and dropouts
"""

from __future__ import annotations

import os

import numpy as np

from paramserver.federated.secagg import graph, masks, shamir
from paramserver.federated.secagg.protocol import (
    AdvertisedKeys,
    RevealedShare,
    RoundParams,
    SecAggAborted,
)


def associated_data(round_: int, sender: str, holder: str) -> bytes:
    """What a share's ciphertext is bound to: round, owner and holder."""
    return f"{round_}:{sender}:{holder}".encode()


class ClientRound:
    """Fresh keys and self-mask seed for one round; never reused across rounds."""

    def __init__(self, client_id: str, round_: int, weight: int) -> None:
        self.client_id, self.round, self.weight = client_id, round_, weight
        self._cipher = masks.KeyPair.generate()
        self._mask = masks.KeyPair.generate()
        self._seed = os.urandom(masks.KEY_BYTES)  # b_u
        self._params: RoundParams | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._own: tuple[int, int] = (0, 0)  # our own shares of (s_sk, b)
        self._inbox: dict[str, bytes] = {}

    def advertise(self) -> AdvertisedKeys:
        return AdvertisedKeys(self.client_id, self._cipher.public, self._mask.public,
                              self.weight)

    def share_keys(self, params: RoundParams) -> dict[str, bytes]:
        """Shamir shares (threshold t) of our mask key and seed for our neighbours and
        ourselves; each neighbour's pair encrypted under the key we agree with it."""
        keys = params.keys()
        mine = keys.get(self.client_id)
        if (mine is None or (mine.cipher_key, mine.mask_key) != (self._cipher.public,
                                                                 self._mask.public)
                or mine.weight < 1 or params.round != self.round):
            raise SecAggAborted("the server's participant list does not hold our keys")
        self.weight = mine.weight  # the server states it (1 when it takes a plain mean)
        if len(keys) < params.threshold:
            raise SecAggAborted(f"{len(keys)} participants, fewer than the threshold "
                                f"{params.threshold}")
        self._params = params
        self._neighbours = graph.neighbours(keys, params.graph_seed, self.round)[self.client_id]
        points = graph.points(keys)
        holders = [points[c] for c in sorted(self._neighbours | {self.client_id})]
        key_shares = shamir.split(self._mask.private, holders, params.threshold)
        seed_shares = shamir.split(self._seed, holders, params.threshold)
        me = points[self.client_id]
        self._own = (key_shares[me], seed_shares[me])
        return {v: masks.encrypt(
            masks.agree(self._cipher.private, keys[v].cipher_key, masks.SHARE_INFO),
            shamir.share_to_bytes(key_shares[points[v]])
            + shamir.share_to_bytes(seed_shares[points[v]]),
            associated_data(self.round, self.client_id, v))
            for v in sorted(self._neighbours)}

    def mask(self, inbox: dict[str, bytes], encoded: np.ndarray) -> np.ndarray:
        """y = encoded + PRG(b) + sum over neighbours v that shared keys of
        (+PRG(s_uv) if our id < v's else -PRG(s_uv)), all mod 2^32."""
        params = self._require_params()
        if not set(inbox) <= self._neighbours:
            raise SecAggAborted("shares arrived from clients that are not our neighbours")
        self._inbox = dict(inbox)
        keys = params.keys()
        masked = encoded.astype(np.uint32) + masks.prg(self._seed, len(encoded))
        for v in sorted(inbox):
            pair = masks.prg(masks.agree(self._mask.private, keys[v].mask_key,
                                         masks.MASK_INFO), len(encoded))
            masked = masked + pair if self.client_id < v else masked - pair
        return masked

    def unmask(self, survivors: frozenset[str]) -> tuple[RevealedShare, ...]:
        """For each neighbour that shared keys with us: its seed share if it survived, its
        mask-key share if not (never both: that would unmask it); our own seed share."""
        params = self._require_params()
        if len(survivors) < params.threshold or self.client_id not in survivors:
            raise SecAggAborted(f"{len(survivors)} survivors, threshold {params.threshold}")
        keys = params.keys()
        revealed = [RevealedShare(self.client_id, False, shamir.share_to_bytes(self._own[1]))]
        for v in sorted(self._inbox):
            plain = masks.decrypt(
                masks.agree(self._cipher.private, keys[v].cipher_key, masks.SHARE_INFO),
                self._inbox[v], associated_data(self.round, v, self.client_id))
            dropped = v not in survivors
            part = plain[:shamir.SHARE_BYTES] if dropped else plain[shamir.SHARE_BYTES:]
            revealed.append(RevealedShare(v, dropped, part))
        return tuple(revealed)

    def _require_params(self) -> RoundParams:
        if self._params is None:
            raise SecAggAborted("share_keys() first")
        return self._params
