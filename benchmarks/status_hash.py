"""A tiny push while 4 callers ask for the state hash of a 256 MiB model (issue #13): the
hash now runs on a copy outside the store lock, one at a time, remembered per version.
"Before" hashes under the store lock, as the server did.

    python -m benchmarks.status_hash
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.store import state_digest
from paramserver.types import Mode, Role
from tests.helpers import push_stream, register_stream

BIG = 64 << 20  # float32 elements: 256 MiB
CALLERS, PUSHES = 4, 20


def _push_ms(core: ParameterServerCore, session: str, hash_once) -> str:  # type: ignore[no-untyped-def]
    """Median and slowest push, in ms."""
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            hash_once()

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    times = []
    for _ in range(PUSHES):
        step = core.store.version
        started = time.perf_counter()
        core.push(iter(push_stream(session, step, {"tiny": torch.ones(4)})))
        times.append(time.perf_counter() - started)
        time.sleep(0.02)
    stop.set()
    for thread in threads:
        thread.join()
    return f"{statistics.median(times) * 1e3:.1f} (max {max(times) * 1e3:.0f})"


def main() -> None:
    core = ParameterServerCore(ServerConfig(mode=Mode.ASYNC, optimizer=OptimizerConfig(
        lr=0.1, momentum=0.0)))
    session = core.handshake("w", Role.WORKER, [], []).session_id
    core.register(iter(register_stream(session, {"big": torch.zeros(BIG),
                                                 "tiny": torch.zeros(4)})))
    alone = _push_ms(core, session, lambda: time.sleep(0.01))

    def under_lock() -> None:
        with core.store.lock:
            state_digest(core.store.version, core.store.params)

    before = _push_ms(core, session, under_lock)
    after = _push_ms(core, session, core.store.state_hash)
    print(f"tiny push, median of {PUSHES} (slowest), {CALLERS} callers hashing a 256 MiB model: "
          f"no hashing {alone} ms, hash under the lock (before) {before} ms, hash of a "
          f"copy, cached per version (after) {after} ms")


if __name__ == "__main__":
    main()
