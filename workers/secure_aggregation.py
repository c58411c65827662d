"""A federated client's round under secure aggregation (issue #17): the four stages of
`paramserver.federated.secagg` over the SecureAggregate RPC, and the ordered steps that turn
the local update into the masked vector the server receives.

The client's update pipeline reads clip -> noise -> quantise -> mask: differential
privacy's steps (`workers.update_steps`, on the update's tensors) run first, then the update
is flattened (float64, the model's tensors in the server's layout order) and goes through
this module's vector steps, each `step(vector, round) -> vector`: `quantise` turns it into
uint32 in Z_{2^32} (pre-scaled by the weight the server states), `mask` adds the self and
pairwise masks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

from paramserver import serde
from paramserver.errors import Aborted, InvalidArgument, from_rpc_error
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import (
    RoundParams,
    SecAggAborted,
    SecAggReply,
    SecAggRequest,
    Stage,
)
from workers.connection import ServerConnection
from workers.parameter_client import ParameterClient

log = logging.getLogger(__name__)
RETRIED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


@dataclass
class RoundState:
    """What the update steps of one round may use."""

    round: int
    weight: int
    params: RoundParams
    secagg: ClientRound
    inbox: dict[str, bytes] = field(default_factory=dict)


VectorStep = Callable[[np.ndarray, RoundState], np.ndarray]


def quantise(vector: np.ndarray, state: RoundState) -> np.ndarray:
    """float -> uint32: weight * round(clip(x) / quantum) mod 2^32 (`secagg.quantize`)."""
    return state.params.quantizer.encode(vector, state.weight)


def mask(vector: np.ndarray, state: RoundState) -> np.ndarray:
    """uint32 -> uint32: + PRG(b_u) +- the pairwise masks with the neighbours."""
    return state.secagg.mask(state.inbox, vector)


DEFAULT_STEPS: tuple[VectorStep, ...] = (quantise, mask)


def flat_update(update: dict[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    """The update's tensors flattened in `names` order, as float64."""
    return np.concatenate([update[n].detach().reshape(-1).double().numpy() for n in names])


class SecureAggregateCall:
    """The SecureAggregate RPC on one server connection: its bytes count as the
    connection's, and DEADLINE_EXCEEDED or UNAVAILABLE is retried with the same message
    (the server takes a stage's message once) for the connection's `retry_s`."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self._rpc = serde.RPCS["SecureAggregate"]
        self._method = connection.channel.unary_unary(
            serde.method_path("SecureAggregate"), request_serializer=self._encode,
            response_deserializer=self._decode)

    def _encode(self, request: SecAggRequest) -> bytes:
        message: bytes = self._rpc.request_to_bytes(request)
        self.connection.bytes_pushed += len(message)
        return message

    def _decode(self, message: bytes) -> object:
        self.connection.bytes_pulled += len(message)
        return self._rpc.response_from_bytes(message)

    def __call__(self, request: SecAggRequest) -> SecAggReply:
        give_up = time.monotonic() + self.connection.retry_s
        while True:
            try:
                reply = self._method(request, timeout=self.connection.timeout_s)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                if error.code not in RETRIED or time.monotonic() > give_up:
                    raise error from None
                continue
            if isinstance(reply, serde.MalformedMessage):
                raise InvalidArgument(f"the server's answer: {reply.reason}")
            assert isinstance(reply, SecAggReply)
            return reply


class SecureRound:
    """One client's secure-aggregation rounds against a `--secure-aggregation` server."""

    def __init__(self, client: ParameterClient,
                 steps: Sequence[VectorStep] = DEFAULT_STEPS) -> None:
        self.client = client
        self._stub = SecureAggregateCall(client.connections[0])
        self.steps = list(steps)
        self._state: RoundState | None = None

    def _call(self, round_: int, stage: Stage, **fields: object) -> SecAggReply:
        request = SecAggRequest(session_id=self.client.session.session_id, round=round_,
                                stage=stage, **fields)  # type: ignore[arg-type]
        return self._stub(request)

    def share_keys(self, round_: int, weight: int) -> bool:
        """ADVERTISE and SHARE_KEYS (before local training); False if the round failed."""
        secagg = ClientRound(self.client.worker_id, round_, weight)
        try:
            params = self._call(round_, Stage.ADVERTISE, keys=secagg.advertise()).params
            if params is None:
                raise SecAggAborted("the server sent no round parameters")
            sealed = secagg.share_keys(params)
            state = RoundState(round_, secagg.weight, params, secagg)
            state.inbox = self._call(round_, Stage.SHARE_KEYS, sealed=sealed).inbox
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
