"""A bed of N hosts on one machine: network namespaces joined by veth pairs to a bridge,
each host with its own address (10.77.0.0/24) and its own link capped with tc, and the
processes run inside them.

This is the switched, full-duplex network of a real cluster: every host's link is shaped
on both ends (its upload on its own `eth0`, its download on the switch's port), so two
hosts talking never slow a third. Used as a context manager; on exit (also on an
exception, SIGTERM or interpreter exit) every process is ended by pid and every namespace
deleted with its links. A run killed with SIGKILL leaves namespaces named after its dead
pid: `cleanup_leftovers()` (also `python -m testbed --cleanup`) removes them.
"""

from __future__ import annotations

import atexit
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from paramserver.cli.local_cluster import CLI, ClusterError, LocalCluster, ManagedProcess
from paramserver.transport import parse_bandwidth
from testbed import delay_queue, netns
from testbed.netns import LinkShape

SUBNET = "10.77.0"  # private; exists only inside the bed's namespaces
SERVER_PORT = 50051  # every host has its own address, so one port for all


@dataclass(frozen=True)
class Host:
    """One host: its namespace, address and link shape (all of it, also where the delay
    queue does the delay and loss)."""

    name: str
    ns: str
    ip: str
    port: str  # the switch's port (device in the switch namespace) facing this host
    link: LinkShape


@dataclass(frozen=True)
class LinkSpec:
    """A host link as tests write it: '1gbit' / '100mbit' / 'unlimited', delay, loss.

    `delay_ms` and `loss_pct` hold for each direction of each host's link, as netem puts
    them on the host's eth0 (its upload) and on its switch port (its download): a packet
    from one host to another crosses two links, so it takes 2 x delay_ms one way (a round
    trip, 4 x delay_ms) and is lost with probability 1 - (1 - loss_pct/100)^2. Where the
    kernel has no netem, the bed's delay queue gives the same figures (see NetBed);
    `seed` seeds its loss (host i draws from random.Random(seed + i)).
    """

    rate: str = "unlimited"
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    seed: int = 0

    def shape(self) -> LinkShape:
        rate = parse_bandwidth(self.rate)  # bytes/s or None
        return LinkShape(None if rate is None else int(rate * 8), self.delay_ms,
                         self.loss_pct)


@dataclass
class NetBed:
    """`with NetBed(run_dir, hosts=4, link=LinkSpec("1gbit")) as bed:` ...

    Delay and loss come from netem where the kernel has it (`delay_by == "netem"`); else
    from the delay queue (`"queue"`, testbed/delay_queue.py: iptables NFQUEUE): a process
    in each host, started and ended by pid by the bed like any other, holds every IPv4
    packet the host receives for 2 x delay_ms (the sender's upload and its own download,
    since every host has the bed's link) and drops it with probability
    1 - (1 - loss_pct/100)^2, so that round trips and loss between hosts are netem's.
    Where neither works, entering refuses at once, naming both, before making anything.
    """

    run_dir: Path
    hosts: int = 2
    link: LinkSpec = field(default_factory=LinkSpec)
    prefix: str = field(default_factory=netns.new_prefix)
    members: list[Host] = field(default_factory=list)
    cluster: LocalCluster | None = None
    delay_by: str | None = None  # "netem" or "queue" when the link has delay or loss
    _made: list[str] = field(default_factory=list)  # namespaces created, in order
    _closed: bool = False

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def __enter__(self) -> Self:
        why = netns.unavailable()
        if why is not None:
            raise netns.TestbedUnavailable(why)
        if self.link.delay_ms or self.link.loss_pct:
            self.delay_by = netns.delay_backend()  # (raises) before anything is made
        netns.cleanup_leftovers()  # a killed earlier run's namespaces
        netns.end_stray_delays()  # and its delay processes, also those outside them
        atexit.register(self.close)
        _close_on_sigterm()
        try:
            self._build()
            self.cluster = LocalCluster(self.run_dir).__enter__()
            if self.delay_by == "queue":
                self._start_delay_queues()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        netns.ip("netns", "add", name)
        self._made.append(name)
        netns.in_ns(name, "ip", "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_ns(self.switch)
        netns.in_ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        netns.in_ns(self.switch, "ip", "link", "set", "br0", "up")
        shape = self.link.shape()
        for index in range(self.hosts):
            host = Host(f"h{index}", f"{self.prefix}-h{index}", f"{SUBNET}.{index + 1}",
                        f"p{index}", shape)
            self._add_ns(host.ns)
            netns.ip("link", "add", "name", "eth0", "netns", host.ns, "type", "veth", "peer",
                     "name", host.port, "netns", self.switch)
            netns.in_ns(self.switch, "ip", "link", "set", host.port, "master", "br0", "up")
            netns.in_ns(host.ns, "ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
            netns.in_ns(host.ns, "ip", "link", "set", "eth0", "up")
            self.members.append(host)
            self.reshape(host, shape)

    def _start_delay_queues(self) -> None:
        """A delay queue in every host (queue number = host index), for the bed's link."""
        hold_ms = 2 * self.link.delay_ms  # the sender's upload and this host's download
        loss_pct = 100 * (1 - (1 - self.link.loss_pct / 100) ** 2)
        for index, host in enumerate(self.members):
            self.start_delay_queue(host, hold_ms, loss_pct, self.link.seed + index, index)

    def start_delay_queue(self, host: Host, hold_ms: float, loss_pct: float = 0.0,
                          seed: int = 0, queue: int = 0, timeout_s: float = 30.0,
                          ) -> ManagedProcess:
        """Start a delay queue (testbed/delay_queue.py) in `host`: every packet it receives
        waits `hold_ms` or is dropped with probability `loss_pct`; returns once the queue
        is in place. Ended by pid with the bed's other processes (or by stopping it)."""
        managed = self.spawn(host, f"delay-{host.name}", delay_queue.arguments(
            host.ns, queue, hold_ms, loss_pct, seed), program=delay_queue.PROGRAM)
        _await_start(managed, lambda: "delaying" in managed.log_tail(), timeout_s)
        return managed

    def host(self, index: int) -> Host:
        return self.members[index]

    # ---- links ------------------------------------------------------------------------
    def reshape(self, host: Host, link: LinkShape) -> None:
        """Cap `host`'s link both ways (upload on its eth0, download on its switch port).
        With the delay queue, tc does the rate alone, and the delay and loss must stay
        the bed's (the queues hold them)."""
        if self.delay_by == "queue":
            if (link.delay_ms, link.loss_pct) != (self.link.delay_ms, self.link.loss_pct):
                raise netns.TestbedUnavailable(
                    "a host's own delay or loss needs netem; the delay queue gives every "
                    "host the bed's")
            link = link.rate_only()
        netns.shape(host.ns, "eth0", link)
        netns.shape(self.switch, host.port, link)

    def partition(self, host: Host) -> None:
        """Cut `host` off: every packet to or from it is dropped (`loss 100%`)."""
        netns.black_hole(host.ns, "eth0")
        netns.black_hole(self.switch, host.port)

    def heal(self, host: Host) -> None:
        """Give `host` its own link back."""
        self.reshape(host, host.link)

    # ---- processes --------------------------------------------------------------------
    def spawn(self, host: Host, name: str, args: Sequence[str],
              program: Sequence[str] = CLI, env: dict[str, str] | None = None,
              ) -> ManagedProcess:
        """Start `PROGRAM ARGS` (default `paramserver ARGS`) inside `host`; ended by pid
        when the bed closes, its output in RUN_DIR/NAME.log."""
        assert self.cluster is not None, "use the bed as a context manager"
        return self.cluster.spawn(name, args, env=env,
                                  program=["ip", "netns", "exec", host.ns, *program])

    def start_server(self, host: Host, server_args: Sequence[str], name: str | None = None,
                     port: int = SERVER_PORT, timeout_s: float = 60.0,
                     ) -> tuple[ManagedProcess, str]:
        """`paramserver serve` bound to the host's address; (process, "ip:port") once it
        serves."""
        name = name or f"server-{host.name}"
        port_file = self.run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        # --insecure: the hosts are namespaces this bed made on a private bridge; a plaintext
        # bind outside loopback is refused without it (issue #13).
        managed = self.spawn(host, name, ["serve", "--insecure", "--host", host.ip,
                                          "--port", str(port),
                                          "--port-file", str(port_file), *server_args])
        _await_start(managed, port_file.exists, timeout_s)
        return managed, f"{host.ip}:{port}"

    def run(self, host: Host, argv: Sequence[str], timeout_s: float = 60.0,
            ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside `host` and wait for it."""
        return subprocess.run(["ip", "netns", "exec", host.ns, *argv], capture_output=True,
                              text=True, timeout=timeout_s, check=False)

    def status(self, host: Host, address: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """`paramserver status --json` of `address`, asked from inside `host` (None when
        the server does not answer)."""
        done = self.run(host, [*CLI, "status", "--json", "--servers", address, "--timeout",
                               str(timeout_s)], timeout_s + 30)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        """End every process by pid, then delete every namespace (and so every link) this
        bed made. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.cluster is not None:
                self.cluster.stop_all()
        finally:
            for name in reversed(self._made):
                netns.delete(name)
            atexit.unregister(self.close)


def _close_on_sigterm() -> None:
    """SIGTERM unwinds (SystemExit), so `with` blocks and atexit clean up; only where no
    one else handles SIGTERM, and only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _await_start(managed: ManagedProcess, started: Callable[[], bool], timeout_s: float) -> None:
    """Wait until `started()`; ClusterError, with the log's tail, when the process exits
    first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not started():
        if managed.process.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(f"{managed.name} did not start (exit {managed.process.poll()}):"
                               f"\n{managed.log_tail()}")
        time.sleep(0.02)
