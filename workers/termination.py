"""Leave the job when torchrun stops this process.

torchrun's elastic agent stops the workers of a group it restarts (every worker of the
failed node, then of every other node after the new rendezvous) with SIGTERM. Python's
default for SIGTERM ends the process at once, so the servers kept each old rank's session
until its lease ran out: every step waited for the dead ranks meanwhile, and each restarted
rank's attach waited it out too (`workers.claims`). Under the agent, `leave_on_sigterm`
makes SIGTERM send Leave to every shard first (a couple of seconds at most, within the
agent's grace before SIGKILL), then end the process as SIGTERM would have. Only a SIGKILLed
rank still holds its session for a lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import Mapping
from types import FrameType

from workers.parameter_client import ParameterClient

log = logging.getLogger(__name__)
LEAVE_TIMEOUT_S = 2.0  # per shard; torchrun waits longer before its SIGKILL

_clients: weakref.WeakSet[ParameterClient] = weakref.WeakSet()


def leave_on_sigterm(client: ParameterClient, env: Mapping[str, str] | None = None) -> bool:
    """Under torchrun's elastic agent (TORCHELASTIC_RUN_ID set), make SIGTERM leave the job
    on `client`'s shards before the process ends. Installs the handler once, from the main
    thread, and only where SIGTERM still has its default action (a handler of the training
    script's own is left alone). True when `client` will leave on SIGTERM."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env:
        return False
    if signal.getsignal(signal.SIGTERM) is not _leave_and_exit:
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
            return False
        signal.signal(signal.SIGTERM, _leave_and_exit)
    _clients.add(client)
    return True


def _leave_and_exit(signum: int, frame: FrameType | None) -> None:
    """Leave on every shard of every attached client (from the main thread, not through the
    clients' fan-out threads, which may be held by a pull waiting for the step), then die
    of SIGTERM as the default action would."""
    for client in list(_clients):
        for connection in client.connections:
            with contextlib.suppress(Exception):  # a closed channel: that client is done
                connection.leave(LEAVE_TIMEOUT_S)
    log.info("SIGTERM: left the job on %d client(s)", len(_clients))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
