"""Shared fixtures: in-process servers on 127.0.0.1:0, stopped after each test."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from paramserver.cli.local_cluster import LocalCluster
from paramserver.server.app import RunningServer, ServerHooks, start_server
from paramserver.server.config import ServerConfig

ServerFactory = Callable[..., RunningServer]

# Property tests check invariants, not speed: no per-example deadline, which a loaded
# 2-core machine would otherwise turn into flaky failures.
settings.register_profile("paramserver", deadline=None)
settings.load_profile("paramserver")


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """start(hooks=None, host="127.0.0.1", advertise_address="", metrics_port=None,
    **ServerConfig fields)
    -> RunningServer on an ephemeral loopback port; `hooks` injects faults
    (tests/server_faults.py)."""
    started: list[RunningServer] = []

    def start(hooks: ServerHooks | None = None, host: str = "127.0.0.1",
              advertise_address: str = "", metrics_port: int | None = None,
              **config: object) -> RunningServer:
        server = start_server(ServerConfig(**config), host, 0,  # type: ignore[arg-type]
                              hooks=hooks, advertise_address=advertise_address,
                              metrics_port=metrics_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace_s=0.5)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A LocalCluster in a temporary run directory; every process it started is stopped
    afterwards, and on a failure each one's log tail is printed with it."""
    with tempfile.TemporaryDirectory(prefix="ps-cluster-") as run_dir, \
            LocalCluster(Path(run_dir)) as running:
        try:
            yield running
        except BaseException:
            for managed in running.processes:
                print(f"---- {managed.name} (exit {managed.process.poll()})\n"
                      f"{managed.log_tail(15)}")
            raise
