"""`paramserver status --json` for scripts and `--watch` redrawing, against a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import ServerFactory

STATUS = [sys.executable, "-m", "paramserver.cli.main", "status"]


def test_status_json_lists_each_shard_and_null_for_an_unreachable_one(
        server_factory: ServerFactory) -> None:
    server = server_factory(expected_workers=3, advertise_address="ps-0.ps:50051")
    done = subprocess.run([*STATUS, "--json", "--timeout", "2", "--servers",
                           f"{server.address},127.0.0.1:1"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1  # one shard did not answer
    first, second = json.loads(done.stdout)
    assert second is None
    assert first["address"] == server.address and first["version"] == 0
    assert first["expected_workers"] == 3 and first["mode"] == "sync"
    assert first["advertise_address"] == "ps-0.ps:50051"


def test_status_watch_redraws_until_interrupted(server_factory: ServerFactory) -> None:
    server = server_factory()
    watch = subprocess.Popen([*STATUS, "--watch", "0.2", "--servers", server.address],
                             stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    stdout, lines = watch.stdout, []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:  # interrupt once it has drawn twice (importing the CLI is slow on a loaded machine)
        deadline = time.monotonic() + 60
        while (sum(f"== {server.address}" in line for line in list(lines)) < 2
               and time.monotonic() < deadline and watch.poll() is None):
            time.sleep(0.1)
    finally:
        os.kill(watch.pid, signal.SIGINT)
        watch.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert watch.returncode == 0
    assert out.count(f"== {server.address}") >= 2  # drawn more than once
    assert "\x1b[2J" in out  # the screen is cleared between drawings
