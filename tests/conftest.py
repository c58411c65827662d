"""Shared fixtures: in-process servers on 127.0.0.1:0, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from paramserver.server.app import RunningServer, ServerHooks, start_server
from paramserver.server.config import ServerConfig

ServerFactory = Callable[..., RunningServer]

# Property tests check invariants, not speed: no per-example deadline, which a loaded
# 2-core machine would otherwise turn into flaky failures.
settings.register_profile("paramserver", deadline=None)
settings.load_profile("paramserver")


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """start(hooks=None, **ServerConfig fields) -> RunningServer on an ephemeral loopback
    port; `hooks` injects faults (tests/server_faults.py)."""
    started: list[RunningServer] = []

    def start(hooks: ServerHooks | None = None, **config: object) -> RunningServer:
        server = start_server(ServerConfig(**config), "127.0.0.1", 0,  # type: ignore[arg-type]
                              hooks=hooks)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace_s=0.5)
