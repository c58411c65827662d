"""Link caps applied the same way to every system: tc on the loopback of a network namespace.

A token bucket inside our client would cap only us; gloo and TensorPipe have no such hook.
So the capped runs happen in a child process started under `unshare --net` (a private
network namespace with its own `lo`, nothing else in it), where `tc qdisc ... tbf` on `lo`
shapes every byte of every system alike, 127.0.0.1 and ephemeral ports as usual.

What the cap models: on `lo` each packet is sent once, so the bucket carries the traffic of
all processes, both directions, together: one shared bottleneck link (a hub, or the NIC of
a parameter server that all traffic crosses). For a parameter server that is the real
bottleneck; for all-reduce, whose ranks each have their own link on a switched network,
it charges every rank's bytes to the one link (at W=2 it doubles all-reduce's time at a
low cap compared with a full-duplex switch). The report gives the bytes on the wire per
step for each system so either model can be read off.
"""

from __future__ import annotations

import shutil
import subprocess

from paramserver.transport import parse_bandwidth

BURST_S = 0.001  # bucket depth in seconds of the rate (at least MIN_BURST)
MIN_BURST = 256 << 10  # several 64 KiB loopback packets (lo's MTU is 64 KiB)
QUEUE_S = 0.2  # bytes that may wait in the queue, in seconds of the rate (at least 4 MiB)


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30,
                          check=False)


def apply(cap: str) -> None:
    """Shape this namespace's `lo` to `cap` ('unlimited' removes the shaper)."""
    rate = parse_bandwidth(cap)
    if rate is None:
        _tc("qdisc", "del", "dev", "lo", "root")  # fails harmlessly when none is set
        return
    burst = max(int(rate * BURST_S), MIN_BURST)
    limit = max(int(rate * QUEUE_S), 4 << 20)
    done = _tc("qdisc", "replace", "dev", "lo", "root", "tbf", "rate", f"{int(rate * 8)}bit",
               "burst", str(burst), "limit", str(limit))
    if done.returncode != 0:
        raise RuntimeError(f"tc could not cap lo at {cap}: {done.stderr.strip()}")


def bring_up_loopback() -> None:
    """A fresh namespace's `lo` is down; bring it up (called inside the namespace)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)


def command(argv: list[str]) -> list[str]:
    """`argv` run in a private network namespace."""
    return ["unshare", "--net", "--", *argv]


def unavailable() -> str | None:
    """Why capped runs cannot happen here (None: they can): needs unshare, ip and tc, and
    the right to create a network namespace (root or CAP_SYS_ADMIN)."""
    missing = [tool for tool in ("unshare", "ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    probe = ("ip link set lo up && tc qdisc add dev lo root tbf rate 100mbit burst 256kb "
             "limit 4mb")
    try:
        done = subprocess.run(command(["sh", "-c", probe]), capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare failed: {error}"
    if done.returncode != 0:
        return f"unshare --net / tc failed: {done.stderr.strip() or done.returncode}"
    return None
