"""The worker side of a discarded sync step (issue #14, `workers/repush.py`): the step's
pushes are sent again, in order, unchanged, each as a new push; a step is forgotten once
a new one starts."""

from __future__ import annotations

import pytest
import torch

from paramserver.errors import Aborted, StepDiscarded
from paramserver.types import PushResult, TensorSpec
from workers.repush import MAX_DISCARDS, SentPush, SentPushes

SPEC = (TensorSpec.of("w", torch.zeros(2)),)


class FakeConnection:
    """Answers pushes in order from `answers` (an exception is raised), records them."""

    address = "fake:1"

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.sent: list[tuple[int, bool, bytes]] = []

    def push(self, step, specs, payloads, num_samples, more_parts, options,  # type: ignore[no-untyped-def]
             momentum_applied=False):
        self.sent.append((step, more_parts, bytes(payloads[0])))
        answer = self.answers.pop(0) if self.answers else PushResult(step, applied=False)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _push(step: int, payload: bytes, more_parts: bool = False) -> SentPush:
    return SentPush(step, SPEC, (memoryview(payload),), 1, more_parts, None, False)


def test_a_push_answered_step_discarded_sends_the_steps_parts_again() -> None:
    connection = FakeConnection([PushResult(0, False), StepDiscarded("step 0: gone")])
    sent = SentPushes(1)
    sent.send(0, connection, _push(0, b"part", more_parts=True))  # type: ignore[arg-type]
    result = sent.send(0, connection, _push(0, b"last"))  # type: ignore[arg-type]
    assert result == PushResult(0, False)
    assert connection.sent == [(0, True, b"part"), (0, False, b"last"),
                               (0, True, b"part"), (0, False, b"last")]
    assert sent.repushes == [1]


def test_a_discarded_pull_sends_only_the_current_step_again() -> None:
    connection = FakeConnection([])
    sent = SentPushes(2)
    sent.send(1, connection, _push(0, b"old"))  # type: ignore[arg-type]
    sent.send(1, connection, _push(1, b"new"))  # type: ignore[arg-type]  # a new step
    sent.send_again(1, connection, "step 1: gone")  # type: ignore[arg-type]
    assert connection.sent[-1] == (1, False, b"new") and len(connection.sent) == 3
    sent.clear()  # the step's pull completed
    with pytest.raises(StepDiscarded, match="no push of this step is held"):
        sent.send_again(1, connection, "step 1: gone")  # type: ignore[arg-type]


def test_endless_discards_give_up() -> None:
    connection = FakeConnection([StepDiscarded("x")] * (MAX_DISCARDS + 1))
    with pytest.raises(StepDiscarded, match="giving up"):
        SentPushes(1).send(0, connection, _push(0, b"g"))  # type: ignore[arg-type]


def test_a_step_closed_meanwhile_drops_the_push_before_the_pull() -> None:
    connection = FakeConnection([PushResult(0, False), Aborted("step 0 already closed")])
    sent = SentPushes(1)
    sent.send(0, connection, _push(0, b"g"))  # type: ignore[arg-type]
    sent.resend_before_pull(0, connection, "step 0: gone")  # type: ignore[arg-type]
    assert len(connection.sent) == 2
