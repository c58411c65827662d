"""The server's secure-aggregation stages (`SecureRound`) without a network: stages close
when every live client answered or at the timeout, retries are not taken twice, bad input
changes nothing, and a failed round says why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramserver.errors import Aborted, FailedPrecondition, InvalidArgument
from paramserver.federated.config import FederatedConfig
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import SecAggRequest, Stage
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.policies.secure_rounds import SecureRound
from paramserver.types import Mode, Role
from tests.helpers import push_stream, register_stream

IDS = ["a", "b", "c", "d", "e"]
LENGTH = 6


def _request(stage: Stage, **fields: object) -> SecAggRequest:
    return SecAggRequest(session_id="s", round=0, stage=stage, **fields)  # type: ignore[arg-type]


def _to_masking(timeout_s: float = 5.0) -> tuple[SecureRound, dict[str, ClientRound]]:
    """Everyone advertised and shared keys; the round waits for masked inputs."""
    secure = SecureRound(Aggregation(0, LENGTH, 1.0, 0.6, 0), frozenset(IDS), needed=1,
                         opened=0.0, timeout_s=timeout_s)
    clients = {c: ClientRound(c, 0, 2) for c in IDS}
    for c, client in clients.items():
        secure.submit(c, _request(Stage.ADVERTISE, keys=client.advertise()))
    assert secure.advance(set(IDS), 0.1) is False and secure.stage is Stage.SHARE_KEYS
    params = secure.reply("a", Stage.ADVERTISE).params  # type: ignore[union-attr]
    assert params is not None
    for c, client in clients.items():
        secure.submit(c, _request(Stage.SHARE_KEYS, sealed=client.share_keys(params)))
    secure.advance(set(IDS), 0.2)
    assert secure.stage is Stage.MASKED_INPUT
    return secure, clients


def _mask(secure: SecureRound, clients: dict[str, ClientRound], who: list[str],
          value: float = 0.25) -> None:
    params = secure.aggregation.params
    assert params is not None
    for c in who:
        inbox = secure.reply(c, Stage.SHARE_KEYS).inbox  # type: ignore[union-attr]
        vector = clients[c].mask(inbox, params.quantizer.encode(np.full(LENGTH, value), 2))
        secure.submit(c, _request(Stage.MASKED_INPUT, masked=vector.astype("<u4").tobytes()))


def test_a_silent_client_is_a_dropout_once_the_stage_times_out() -> None:
    secure, clients = _to_masking()
    _mask(secure, clients, IDS[:4])  # "e" never sends, but stays connected
    assert secure.advance(set(IDS), 1.0) is False and secure.stage is Stage.MASKED_INPUT
    assert secure.reply("a", Stage.MASKED_INPUT) is None  # still open: the answer waits
    secure.advance(set(IDS), 5.3)  # the stage timed out (opened at 0.2)
    assert secure.stage is Stage.UNMASK and secure.dropouts() == ["e"]
    survivors = frozenset(secure.reply("a", Stage.MASKED_INPUT).survivors)  # type: ignore[union-attr]
    for c in IDS[:4]:
        secure.submit(c, _request(Stage.UNMASK, revealed=clients[c].unmask(survivors)))
    assert secure.advance(set(IDS), 5.4) is True and secure.mean is not None
    np.testing.assert_allclose(secure.mean, 0.25, atol=secure.aggregation.params.quantizer.quantum)  # type: ignore[union-attr]


def test_a_retry_is_not_taken_twice_and_bad_input_changes_nothing() -> None:
    secure, clients = _to_masking()
    _mask(secure, clients, ["a"])
    secure.submit("a", _request(Stage.MASKED_INPUT, masked=b"anything"))  # a retry: ignored
    with pytest.raises(InvalidArgument, match="uint32"):
        secure.submit("b", _request(Stage.MASKED_INPUT, masked=b"\0" * 3))
    with pytest.raises(FailedPrecondition, match="at MASKED_INPUT"):
        secure.submit("b", _request(Stage.UNMASK))
    with pytest.raises(Aborted, match="missed an earlier stage"):
        secure.submit("stranger", _request(Stage.MASKED_INPUT, masked=b"\0" * 24))
    with pytest.raises(Aborted, match="closed without"):
        secure.submit("stranger", _request(Stage.SHARE_KEYS))
    assert set(secure.aggregation.masked) == {"a"} and secure.answered == {"a"}


def test_too_few_masked_inputs_fail_the_round_with_a_reason() -> None:
    secure, clients = _to_masking()
    _mask(secure, clients, IDS[:2])  # t = 3
    assert secure.advance(set(IDS), 9.0) is True and secure.mean is None
    assert "threshold 3" in secure.failure
    with pytest.raises(Aborted, match="failed"):
        secure.reply("a", Stage.MASKED_INPUT)


def _secure_core(clock: list[float]) -> tuple[ParameterServerCore, list[str]]:
    config = ServerConfig(mode=Mode.FEDERATED, expected_workers=2,
                          federated=FederatedConfig(secure_aggregation=True,
                                                    round_timeout_s=0.2))
    core = ParameterServerCore(config, clock=lambda: clock[0])
    sessions = [core.handshake(f"c{i}", Role.WORKER, [], [], secure_aggregation=True).session_id
                for i in range(2)]
    core.register(iter(register_stream(sessions[0], {"w": torch.zeros(4)})))
    return core, sessions


def test_a_secure_round_nobody_starts_is_skipped_at_the_round_timeout() -> None:
    clock = [1000.0]
    core, _ = _secure_core(clock)
    core.tick()
    assert core.store.version == 0
    clock[0] += 0.25
    core.tick()
    assert core.store.version == 1 and core.status().skipped_rounds == (0,)


def test_plain_pushes_and_clients_that_do_not_offer_it_are_refused() -> None:
    clock = [1000.0]
    core, sessions = _secure_core(clock)
    before = core.store.state_hash()
    with pytest.raises(FailedPrecondition, match="--secure-aggregation"):
        core.push(iter(push_stream(sessions[0], 0, {"w": torch.ones(4)})))
    with pytest.raises(FailedPrecondition, match="--secure-aggregation"):
        core.handshake("plain", Role.WORKER, [], [])
    core.handshake("observer", Role.OBSERVER, [], [])  # observers are not asked
    assert core.store.state_hash() == before and "plain" not in core.members.live_workers()
