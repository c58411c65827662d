"""The records of one secure-aggregation round, as the client and the server trade them.

Four stages, in order (Bonawitz et al. 2017, section 4): ADVERTISE (public keys and weight),
SHARE_KEYS (encrypted Shamir shares for the neighbours), MASKED_INPUT (the masked, quantised
update), UNMASK (shares revealed for the survivors' self masks and the dropouts' mask keys).
Each stage closes once every live client expected in it answered, or at its timeout; the
answer to a stage is what the next one needs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from paramserver.federated.secagg.graph import degree
from paramserver.federated.secagg.quantize import Quantizer


class Stage(enum.IntEnum):
    ADVERTISE = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASK = 4


class SecAggAborted(Exception):
    """The round cannot complete securely (too few survivors, a missing share, bad input)."""


@dataclass(frozen=True)
class AdvertisedKeys:
    """A client's round keys: X25519 publics (32 bytes each) and its integer weight."""

    client_id: str
    cipher_key: bytes  # c_pk: encrypts the shares sent to it
    mask_key: bytes  # s_pk: pairwise mask seeds
    weight: int


@dataclass(frozen=True)
class RoundParams:
    """The server's answer to ADVERTISE: everyone who advertised (sorted by id), the Shamir
    threshold, the quantiser and the graph seed. Every client derives the same graph."""

    round: int
    participants: tuple[AdvertisedKeys, ...]
    threshold: int
    clip: float
    levels: int
    graph_seed: int

    @property
    def quantizer(self) -> Quantizer:
        return Quantizer(self.clip, self.levels)

    def keys(self) -> dict[str, AdvertisedKeys]:
        return {k.client_id: k for k in self.participants}


def threshold_for(participants: int, ratio: float) -> int:
    """t = ceil(ratio * (k + 1)) of the k + 1 holders of each client's shares (its k
    neighbours and itself), at least 1."""
    return max(1, math.ceil(ratio * (degree(participants) + 1)))


@dataclass(frozen=True)
class RevealedShare:
    """A share a survivor reveals at UNMASK: of `owner`'s mask private key (the owner
    dropped after sharing its keys) or of its self-mask seed (the owner survived)."""

    owner: str
    mask_key: bool
    share: bytes  # shamir.SHARE_BYTES


@dataclass(frozen=True)
class SecAggRequest:
    """One stage's message from a client (only the stage's own fields are set)."""

    session_id: str
    round: int
    stage: Stage
    keys: AdvertisedKeys | None = None  # ADVERTISE (client_id is the session's worker)
    sealed: dict[str, bytes] = field(default_factory=dict)  # SHARE_KEYS: to -> ciphertext
    masked: bytes = b""  # MASKED_INPUT: uint32 little-endian
    revealed: tuple[RevealedShare, ...] = ()  # UNMASK


@dataclass(frozen=True)
class SecAggReply:
    """The answer once the stage closed (only the stage's own fields are set)."""

    params: RoundParams | None = None  # ADVERTISE
    inbox: dict[str, bytes] = field(default_factory=dict)  # SHARE_KEYS: from -> ciphertext
    survivors: tuple[str, ...] = ()  # MASKED_INPUT
    version: int = 0  # UNMASK: the version after the round
    applied: bool = False  # UNMASK: the sum was applied (False: the round failed)
