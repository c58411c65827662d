"""Linux network namespaces, veth pairs, a bridge and tc shapers: the commands behind the
test bed, and the clean-up of what an earlier run left behind.

Everything a bed creates lives inside namespaces it created itself: one "switch" namespace
holding the bridge, and one namespace per host holding its end of a veth pair (`eth0`);
the root namespace is never touched, so deleting the namespaces removes every link. Names
carry the owner's pid (`pstb<pid>x<random>-h0`), so a leftover is recognisable and a
clean-up can tell a dead run's namespaces from a live one's.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, replace

from testbed import delay_queue

MARK = "pstb"  # every namespace a bed creates starts with this
NAME = re.compile(rf"^{MARK}(?P<pid>\d+)x(?P<tag>[0-9a-f]{{4}})-")
BURST_S = 0.001  # bucket depth in seconds of the rate (at least MIN_BURST)
MIN_BURST = 256 << 10  # several 64 KiB GSO segments
QUEUE_S = 0.2  # queue depth in seconds of the rate (at least 4 MiB)
# A token bucket nothing fits through: every packet is larger than its bucket, so every
# packet is dropped, the `loss 100%` of a cut cable where sch_netem is not built.
BLACK_HOLE = ("tbf", "rate", "8bit", "burst", "64", "limit", "1")


class TestbedUnavailable(RuntimeError):
    """Namespaces, veth pairs or tc cannot be used here (not root, tools missing)."""


def new_prefix() -> str:
    """A per-run prefix: the owner's pid and a random tag."""
    return f"{MARK}{os.getpid()}x{secrets.token_hex(2)}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command inside namespace `ns`."""
    return ip("netns", "exec", ns, *argv, check=check)


@dataclass(frozen=True)
class LinkShape:
    """One direction of a host's link: a rate in bits/s, optional delay and loss."""

    rate_bit: int | None = None  # None: unlimited
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    def qdisc(self) -> tuple[str, ...] | None:
        """The `tc qdisc replace ... root` arguments, None for no shaper."""
        if self.delay_ms or self.loss_pct:  # needs sch_netem, which has its own rate
            rate = ("rate", f"{self.rate_bit}bit") if self.rate_bit else ()
            return ("netem", "delay", f"{self.delay_ms}ms", "loss", f"{self.loss_pct}%",
                    "limit", "100000", *rate)
        if self.rate_bit is None:
            return None
        rate_bytes = self.rate_bit / 8
        burst = max(int(rate_bytes * BURST_S), MIN_BURST)
        limit = max(int(rate_bytes * QUEUE_S), 4 << 20)
        return ("tbf", "rate", f"{self.rate_bit}bit", "burst", str(burst), "limit", str(limit))

    def rate_only(self) -> LinkShape:
        """This shape without delay and loss (what tc does where the delay queue does those)."""
        return replace(self, delay_ms=0.0, loss_pct=0.0)


def netem_missing(tc_said: str, queue_said: str = "not tried") -> str:
    """Why a bed cannot delay or drop: what tc said of netem, and of the NFQUEUE probe."""
    return ("link delay and loss need tc's netem qdisc, the kernel module sch_netem "
            "(CONFIG_NET_SCH_NETEM), or else iptables with NFQUEUE (the bed's delay queue, "
            f"testbed/delay_queue.py); tc: {tc_said}; NFQUEUE: {queue_said}; "
            "rate caps (tbf) and partitions work without them")


def shape(ns: str, dev: str, link: LinkShape) -> None:
    """Shape the egress of `dev` in `ns` (replacing any shaper)."""
    args = link.qdisc()
    if args is None:
        in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        return
    done = in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", *args, check=False)
    if done.returncode != 0 and args[0] == "netem":
        raise TestbedUnavailable(netem_missing(done.stderr.strip() or "netem refused"))
    if done.returncode != 0:
        raise TestbedUnavailable(f"tc cannot shape {dev} with {args[0]}: "
                                 f"{done.stderr.strip()}")


def black_hole(ns: str, dev: str) -> None:
    """Drop every packet leaving `dev` (netem `loss 100%` where available)."""
    done = in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem", "loss", "100%",
                 check=False)
    if done.returncode != 0:
        in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", *BLACK_HOLE)


def namespaces() -> list[str]:
    """Every namespace this kind of bed could have made (ours or another run's)."""
    listed = ip("netns", "list", check=False).stdout.splitlines()
    return [line.split()[0] for line in listed if line.startswith(MARK)]


def pids_in(ns: str) -> list[int]:
    done = ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def kill_all_in(ns: str, timeout_s: float = 5.0) -> None:
    """SIGKILL every process in `ns` (all were started by the bed that made it) and wait
    until none is left."""
    deadline = time.monotonic() + timeout_s
    while pids := pids_in(ns):
        _sigkill(pids)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in {ns} did not die")
        time.sleep(0.05)


def delete(ns: str) -> None:
    """End every process in `ns`, then delete it (its links go with it)."""
    kill_all_in(ns)
    ip("netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover(ns: str, prefix: str | None) -> bool:
    """Whether `ns` is a bed's and a clean-up may remove it: its run is `prefix`, or, with no
    prefix, its owner is dead."""
    match = NAME.match(ns)
    if match is None:
        return False
    if prefix is not None:
        return ns.startswith(prefix + "-")
    return not _alive(int(match["pid"]))


def cleanup_leftovers(prefix: str | None = None) -> list[str]:
    """Delete the namespaces (with their processes and links) of beds whose owner is dead,
    or, given `prefix`, every namespace of that run; returns the names deleted."""
    removed = []
    for ns in namespaces():
        if _leftover(ns, prefix):
            delete(ns)
            removed.append(ns)
    return removed


def end_stray_delays(prefix: str | None = None, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL the delay processes (testbed/delay_queue.py, known by the namespace named
    after the marker in their argv) of beds whose owner is dead, or of run `prefix`, also
    where their namespace is gone already; returns their pids."""
    ended = [pid for pid, ns in delay_queue.marked().items() if _leftover(ns, prefix)]
    _sigkill(ended)
    deadline = time.monotonic() + timeout_s
    while any(pid in delay_queue.marked() for pid in ended) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ended


def unavailable() -> str | None:
    """Why a bed cannot be made here (None: it can)."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if os.geteuid() != 0:
        return "network namespaces need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN)"
    probe = f"{new_prefix()}-probe"
    try:
        made = ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        veth = in_ns(probe, "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
                     check=False)
        if veth.returncode != 0:
            return f"no veth pairs: {veth.stderr.strip()}"
        tbf = in_ns(probe, "tc", "qdisc", "add", "dev", "probe0", "root", *BLACK_HOLE, check=False)
        if tbf.returncode != 0:
            return f"no tc tbf: {tbf.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"ip failed: {error}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def _tc_refuses_netem() -> str | None:
    """What tc says when it cannot add a netem qdisc (None: it can); sch_netem is a module
    some kernels lack."""
    probe = f"{new_prefix()}-netem"
    try:
        ip("netns", "add", probe)
        done = in_ns(probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                     "1ms", check=False)
        return None if done.returncode == 0 else (done.stderr.strip() or "netem refused")
    finally:
        ip("netns", "del", probe, check=False)


def netem_unavailable() -> str | None:
    """Why netem cannot delay and drop here (None: it can)."""
    said = _tc_refuses_netem()
    return None if said is None else netem_missing(said)


def netem_available() -> bool:
    """Whether delay and partial loss can be had from netem."""
    return netem_unavailable() is None


def queue_unavailable() -> str | None:
    """Why the delay queue (NFQUEUE) cannot stand in for netem here (None: it can): its
    probe, run in a scratch namespace, must see a packet pass through a queue."""
    probe = f"{new_prefix()}-nfq"
    try:
        ip("netns", "add", probe)
        in_ns(probe, "ip", "link", "set", "lo", "up")
        done = in_ns(probe, *delay_queue.PROGRAM, "--probe", check=False)
        return None if done.returncode == 0 else (done.stdout + done.stderr).strip()
    finally:
        ip("netns", "del", probe, check=False)


def delay_backend() -> str:
    """How a bed gets link delay and loss here: "netem" (preferred) or "queue" (NFQUEUE);
    raises TestbedUnavailable naming both ways where neither works."""
    tc_said = _tc_refuses_netem()
    if tc_said is None:
        return "netem"
    queue_said = queue_unavailable()
    if queue_said is None:
        return "queue"
    raise TestbedUnavailable(netem_missing(tc_said, queue_said))


def _sigkill(pids: list[int]) -> None:
    """SIGKILL each of `pids` (one already gone is no error)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
