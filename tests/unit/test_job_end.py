"""The job-end wait under torchrun (`workers.job_end`): a finished rank waits in torchrun's
store until every rank of the world finished, so a restart in progress elsewhere finds it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from torch.distributed import TCPStore

from workers.job_end import wait_for_world


@pytest.fixture
def store() -> Iterator[TCPStore]:
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield master


def _env(store: TCPStore, rank: int, world: int = 2) -> dict[str, str]:
    return {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "job",
            "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store.port)}


def test_no_wait_without_torchruns_store() -> None:
    started = time.monotonic()
    assert not wait_for_world(10, env={"RANK": "0", "WORLD_SIZE": "2"}, timeout_s=30)
    assert not wait_for_world(10, env={"TORCHELASTIC_RUN_ID": "job", "RANK": "0",
                                       "WORLD_SIZE": "2",
                                       "TORCHELASTIC_USE_AGENT_STORE": "False"}, timeout_s=30)
    assert time.monotonic() - started < 1.0


def test_a_finished_rank_waits_until_the_last_rank_finishes(store: TCPStore) -> None:
    done: list[float] = []
    first = threading.Thread(
        target=lambda: done.append(time.monotonic()) if wait_for_world(
            10, env=_env(store, 0), timeout_s=20) else None)
    first.start()
    time.sleep(1.0)
    assert not done and first.is_alive()  # rank 1 has not finished: rank 0 waits
    finished_at = time.monotonic()
    assert wait_for_world(10, env=_env(store, 1), timeout_s=20)
    first.join(10)
    assert done and done[0] >= finished_at


def test_a_rank_that_finished_in_an_earlier_round_counts(store: TCPStore) -> None:
    """Keys outlive a rendezvous round: a restarted rank meets ranks that finished before."""
    assert not wait_for_world(7, env=_env(store, 1), timeout_s=0.3)  # rank 0 never came
    started = time.monotonic()
    assert wait_for_world(7, env=_env(store, 0), timeout_s=20)
    assert time.monotonic() - started < 1.0
    # Another job length in the same run is another job: its ranks wait afresh.
    assert not wait_for_world(8, env=_env(store, 0), timeout_s=0.3)


def test_a_gone_store_ends_the_wait_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    gone = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = _env(gone, 0)
    del gone  # nobody listens on that port any more
    with caplog.at_level("WARNING", logger="workers.job_end"):
        started = time.monotonic()
        assert not wait_for_world(10, env=env, timeout_s=2)
    assert time.monotonic() - started < 10
    assert "cannot wait for the other ranks" in caplog.text
