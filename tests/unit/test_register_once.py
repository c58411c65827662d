"""Workers that start together all send the model's values; the server reads one copy at a
time (issue #14: W registrations assembling at once held W copies of the model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Mode, Registration, Role
from tests.helpers import register_stream

INIT = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}


def test_a_second_registration_waits_and_joins_without_reading_its_values() -> None:
    core = ParameterServerCore(ServerConfig(mode=Mode.SYNC, expected_workers=2,
                                            optimizer=OptimizerConfig(momentum=0.0)))
    first, second = (core.handshake(w, Role.WORKER, [], []).session_id for w in ("a", "b"))
    reading, release = threading.Event(), threading.Event()
    read_by_second: list[object] = []

    def held(messages: list[object]) -> Iterator[object]:
        """The first registration: its header and one chunk, then a pause mid-stream."""
        yield from messages[:2]
        reading.set()
        release.wait(10.0)
        yield from messages[2:]

    def counted(messages: list[object]) -> Iterator[object]:
        for message in messages:
            read_by_second.append(message)
            yield message

    answers: dict[str, Registration] = {}
    threads = [threading.Thread(target=lambda: answers.__setitem__(
                   "first", core.register(held(register_stream(first, INIT))))),
               threading.Thread(target=lambda: answers.__setitem__(
                   "second", core.register(counted(register_stream(second, INIT)))))]
    threads[0].start()
    assert reading.wait(10.0)
    threads[1].start()
    threads[1].join(0.3)
    assert threads[1].is_alive(), "the second registration did not wait for the first"
    assert len(read_by_second) == 1  # its header only: no second copy being assembled
    release.set()
    for thread in threads:
        thread.join(10.0)
    assert answers["first"].created and not answers["second"].created
    assert len(read_by_second) == 1
    assert torch.equal(core.store.params["w"], INIT["w"])
