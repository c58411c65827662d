"""Under torchrun, a rank that finishes a sync job waits for every rank of the world.

Why (#15): torchrun restarts a failed node's workers in a new rendezvous round, and the
other nodes' agents join that round only from their monitor loop, while their own workers
still run (they see the waiting node and restart them). When the other nodes' ranks had
already finished the job, their agents sat in torchrun's exit barrier waiting for the
restarting node, which waited in the rendezvous for them, until a timeout failed the
launch. With every rank waiting at the job's end until all WORLD_SIZE ranks reached it,
no agent leaves its monitor loop while a restart is pending: its ranks are stopped and
restarted with the rest, attach at the job's last version, find no step left and end.

The ranks meet in torchrun's own store (TORCHELASTIC_USE_AGENT_STORE: the rendezvous store
at MASTER_ADDR:MASTER_PORT, which lives as long as the launch), one key per rank of the
run and job length. Without that store (another launcher, or torchrun sharing none) there
is no wait. The wait polls, so SIGTERM (`workers.termination`) still ends it at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import timedelta

from torch.distributed import TCPStore

log = logging.getLogger(__name__)
END_WAIT_S = 300.0  # torchrun's own exit barrier waits as long
POLL_S = 0.2
CONNECT_TIMEOUT_S = 5.0


def end_keys(env: Mapping[str, str], total: int) -> tuple[str, list[str]]:
    """(this rank's key, every rank's key) for a job of `total` steps in this run."""
    prefix = f"paramserver/job-end/{env['TORCHELASTIC_RUN_ID']}/{total}/"
    world = int(env["WORLD_SIZE"])
    return prefix + env["RANK"], [prefix + str(rank) for rank in range(world)]


def wait_for_world(total: int, env: Mapping[str, str] | None = None,
                   timeout_s: float = END_WAIT_S, store: TCPStore | None = None) -> bool:
    """Mark this rank done with the job of `total` steps and wait until every rank of
    WORLD_SIZE has been (in this round or an earlier one). True when all were; False
    without torchrun's store, or when it is gone or `timeout_s` ran out (logged)."""
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RUN_ID" not in env:
        return False
    mine, everyone = end_keys(env, total)
    deadline = time.monotonic() + timeout_s
    try:
        if store is None:
            store = _connect(env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                             min(CONNECT_TIMEOUT_S, timeout_s))
        store.set(mine, "1")
        while not store.check(everyone):
            if time.monotonic() > deadline:
                log.warning("job end: not every rank of %d finished within %.0f s; ending "
                            "anyway", len(everyone), timeout_s)
                return False
            time.sleep(POLL_S)
    except (OSError, RuntimeError, ValueError, KeyError) as error:  # store errors derive
        log.warning("job end: cannot wait for the other ranks in torchrun's store: %s", error)
        return False
    return True


def _connect(address: str, port: int, timeout_s: float) -> TCPStore:
    """A client of torchrun's store. A plain socket tries first: TCPStore's constructor
    holds the GIL while it retries, which would starve this rank's heartbeats (and get it
    evicted) when the address does not answer."""
    socket.create_connection((address, port), timeout=timeout_s).close()
    return TCPStore(address, port, is_master=False, timeout=timedelta(seconds=timeout_s))
