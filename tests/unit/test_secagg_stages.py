"""The server's secure-aggregation stages (`SecureRound`) without a network: stages close
when every live client answered or at the timeout, retries are not taken twice, bad input
changes nothing, and a failed round says why."""

from __future__ import annotations

import numpy as np
import pytest

from paramserver.errors import Aborted, FailedPrecondition, InvalidArgument
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import SecAggRequest, Stage
from paramserver.server.policies.secure_rounds import SecureRound

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
    with pytest.raises(FailedPrecondition, match="not expected"):
        secure.submit("stranger", _request(Stage.MASKED_INPUT, masked=b"\0" * 24))
    assert set(secure.aggregation.masked) == {"a"} and secure.answered == {"a"}


def test_too_few_masked_inputs_fail_the_round_with_a_reason() -> None:
    secure, clients = _to_masking()
    _mask(secure, clients, IDS[:2])  # t = 3
    assert secure.advance(set(IDS), 9.0) is True and secure.mean is None
    assert "threshold 3" in secure.failure
    with pytest.raises(Aborted, match="failed"):
        secure.reply("a", Stage.MASKED_INPUT)
