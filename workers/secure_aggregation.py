"""A federated client's round under secure aggregation (issue #17): the four stages of
`paramserver.federated.secagg` over the SecureAggregate RPC, and the ordered steps that turn
the local update into the masked vector the server receives.

The update pipeline is a list of steps, each `step(vector, round) -> vector`, applied in
order to the flat update (float64, the model's tensors in the server's layout order):
`quantise` turns it into uint32 in Z_{2^32} (pre-scaled by the client's weight), `mask` adds
the self and pairwise masks. Steps that work on the float update (clipping, noise for
distributed differential privacy) go before `quantise`:

    SecureRound(client, steps=[clip, add_noise, quantise, mask])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from paramserver.errors import Aborted
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import (
    RoundParams,
    SecAggAborted,
    SecAggReply,
    SecAggRequest,
    Stage,
)
from workers.parameter_client import ParameterClient

log = logging.getLogger(__name__)


@dataclass
class RoundState:
    """What the update steps of one round may use."""

    round: int
    weight: int
    params: RoundParams
    secagg: ClientRound
    inbox: dict[str, bytes] = field(default_factory=dict)


UpdateStep = Callable[[np.ndarray, RoundState], np.ndarray]


def quantise(vector: np.ndarray, state: RoundState) -> np.ndarray:
    """float -> uint32: weight * round(clip(x) / quantum) mod 2^32 (`secagg.quantize`)."""
    return state.params.quantizer.encode(vector, state.weight)


def mask(vector: np.ndarray, state: RoundState) -> np.ndarray:
    """uint32 -> uint32: + PRG(b_u) +- the pairwise masks with the neighbours."""
    return state.secagg.mask(state.inbox, vector)


DEFAULT_STEPS: tuple[UpdateStep, ...] = (quantise, mask)


def flat_update(global_params: dict[str, torch.Tensor], model: torch.nn.Module,
                names: Sequence[str]) -> np.ndarray:
    """global - local, flattened in `names` order, as float64."""
    params = dict(model.named_parameters())
    return np.concatenate([(global_params[n] - params[n].detach()).reshape(-1).double().numpy()
                           for n in names])


class SecureRound:
    """One client's secure-aggregation rounds against a `--secure-aggregation` server."""

    def __init__(self, client: ParameterClient,
                 steps: Sequence[UpdateStep] = DEFAULT_STEPS) -> None:
        self.client = client
        self.steps = list(steps)
        self._state: RoundState | None = None

    def _call(self, round_: int, stage: Stage, **fields: object) -> SecAggReply:
        request = SecAggRequest(session_id=self.client.session.session_id, round=round_,
                                stage=stage, **fields)  # type: ignore[arg-type]
        return self.client.connections[0].secure_aggregate(request)

    def share_keys(self, round_: int, weight: int) -> bool:
        """ADVERTISE and SHARE_KEYS (before local training); False if the round failed."""
        secagg = ClientRound(self.client.worker_id, round_, weight)
        try:
            params = self._call(round_, Stage.ADVERTISE, keys=secagg.advertise()).params
            if params is None:
                raise SecAggAborted("the server sent no round parameters")
            state = RoundState(round_, weight, params, secagg)
            state.inbox = self._call(round_, Stage.SHARE_KEYS,
                                     sealed=secagg.share_keys(params)).inbox
        except (Aborted, SecAggAborted) as error:
            log.info("round %d: secure aggregation stopped: %s", round_, error)
            return False
        self._state = state
        return True

    def send(self, update: np.ndarray) -> SecAggReply | None:
        """MASKED_INPUT and UNMASK for the round `share_keys` opened: the update through the
        steps, then the revealed shares. None if the round failed."""
        state, self._state = self._state, None
        if state is None:
            raise RuntimeError("share_keys() first")
        vector = update
        for step in self.steps:
            vector = step(vector, state)
        if vector.dtype != np.uint32:
            raise TypeError(f"the update steps must end in uint32 (mask), got {vector.dtype}")
        try:
            survivors = self._call(state.round, Stage.MASKED_INPUT,
                                   masked=vector.astype("<u4").tobytes()).survivors
            return self._call(state.round, Stage.UNMASK,
                              revealed=state.secagg.unmask(frozenset(survivors)))
        except (Aborted, SecAggAborted) as error:
            log.info("round %d: secure aggregation stopped: %s", state.round, error)
            return None
