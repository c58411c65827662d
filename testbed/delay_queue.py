"""Delay (and drop) every IPv4 packet a test-bed host receives, without sch_netem: an
iptables NFQUEUE rule hands each packet to this process, which gives the kernel its verdict
(accept) DELAY ms after it arrived, or drops it at once with probability LOSS (a
`random.Random(SEED)`, so a run repeats). Packets are not copied to user space (metadata
only; GSO packets stay whole, and a dropped GSO packet is dropped whole, as netem does),
and one batch verdict releases every packet that is due, in order.

    ip netns exec NS python -I testbed/delay_queue.py --delay-ms 40 [--loss-pct 1]
                                                      [--seed 0] [--queue 0] [--bed NS]

(also `python -m testbed.delay_queue`, which imports the whole test bed first: slower). Run
inside the host's namespace (root; needs `iptables-legacy` or `iptables`, and a kernel with
CONFIG_NETFILTER_NETLINK_QUEUE and the NFQUEUE target); prints "delaying" once its rule is
in, runs until SIGTERM or SIGINT, then removes its rule (a namespace deleted takes the rule
with it). Delaying what a host receives adds DELAY to every round trip through it, at the
packet level: TCP, UDP, ICMP and HTTP/2 all see it. Delayed packets wait in the kernel's
queue; this process costs one small message per packet (at 1 Gbit/s with 64 KiB GSO packets,
about 2000 per second). `--bed NS` marks the process as a test bed's (`--cleanup` finds
leftovers by it). Standard library only, so that it starts fast in every host.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 1, 4, 2
QUEUE_MAXLEN = 65536
SCRIPT = Path(__file__).resolve()
PROGRAM = (sys.executable, "-I", str(SCRIPT))  # isolated: the standard library alone, fast
MARKER = "--bed"  # argv marker of a test bed's delay process, followed by its namespace


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: bytes, family: int = socket.AF_UNSPEC,
             flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind,
                       flags, 0, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def _verdict(queue: int, verdict: int, packet: int, batch: bool) -> bytes:
    """Verdict on `packet` (batch: on every queued packet up to it)."""
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return _message(kind, queue, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet)))


def open_queue(queue: int) -> socket.socket:
    """A netlink socket bound to NFQUEUE `queue`: metadata only, GSO whole, a long queue.
    Raises OSError where the kernel refuses (no nfnetlink_queue, or the queue is taken)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack(
        "!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)), flags=NLM_F_REQUEST | NLM_F_ACK))
    sock.send(_message(NFQNL_MSG_CONFIG, queue,
                       _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                       + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                       + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                       + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO)),
                       flags=NLM_F_REQUEST | NLM_F_ACK))
    for _ in range(2):  # the two acks (errno 0), or the refusal
        if not select.select([sock], [], [], 5.0)[0]:
            raise OSError("nfqueue did not answer its configuration")
        packet_ids(sock.recv(1 << 16))
    return sock


def packet_ids(datagram: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink datagram; raises
    OSError on an error message (an ack, errno 0, is skipped)."""
    ids, at = [], 0
    while at + 16 <= len(datagram):
        length, kind = struct.unpack_from("=IH", datagram, at)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", datagram, at + 16)
            if errno:
                raise OSError(-errno, f"nfqueue refused a request: {os.strerror(-errno)}")
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            header = _attrs(datagram[at + 20:at + length]).get(NFQA_PACKET_HDR)
            if header is not None:
                ids.append(struct.unpack_from("!I", header)[0])
        at += (length + 3) & ~3
    return ids


def run(sock: socket.socket, queue: int, delay_s: float, stop: list[bool],
        loss: float = 0.0, seed: int = 0) -> tuple[int, int]:
    """Hold and release the packets of `sock`'s queue (dropping a `loss` fraction) until
    `stop[0]`; the numbers of packets delayed and dropped."""
    rng = random.Random(seed)
    held: collections.deque[tuple[float, int]] = collections.deque()
    delayed = dropped = 0
    while not stop[0]:
        wait = 0.2 if not held else max(0.0, held[0][0] - time.monotonic())
        if select.select([sock], [], [], wait)[0]:
            now = time.monotonic()
            try:
                datagram = sock.recv(1 << 20)
            except OSError:  # ENOBUFS: ids lost, but the next batch verdict covers them
                continue
            for packet in packet_ids(datagram):
                if loss and rng.random() < loss:
                    sock.send(_verdict(queue, NF_DROP, packet, batch=False))
                    dropped += 1
                else:
                    held.append((now + delay_s, packet))
                    delayed += 1
        now, last = time.monotonic(), None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:  # every queued packet up to `last` is accepted
            sock.send(_verdict(queue, NF_ACCEPT, last, batch=True))
    if held:
        sock.send(_verdict(queue, NF_ACCEPT, held[-1][1], batch=True))
    return delayed, dropped


def iptables() -> str | None:
    """The iptables binary to use (legacy first), None where there is none."""
    return next((name for name in ("iptables-legacy", "iptables") if shutil.which(name)), None)


def rule(dev: str, queue: int) -> list[str]:
    """The INPUT rule that queues what `dev` receives (no listener yet, or any more: pass)."""
    return ["INPUT", "-i", dev, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]


def arguments(ns: str, queue: int, delay_ms: float, loss_pct: float, seed: int,
              dev: str = "eth0") -> list[str]:
    """The arguments (after PROGRAM) of a test bed's delay process for host namespace `ns`,
    marked with it."""
    return ["--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct), "--seed", str(seed),
            "--queue", str(queue), "--dev", dev, MARKER, ns]


def marked() -> dict[int, str]:
    """pid -> namespace of every running test-bed delay process (argv: this script, then
    the marker and a namespace name)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(SCRIPT) in argv and MARKER in argv[:-1]:
            found[int(entry.name)] = argv[argv.index(MARKER) + 1]
    return found


def probe(queue: int = 0) -> str | None:
    """Inside a scratch namespace (lo up): why NFQUEUE cannot delay here, None when a UDP
    datagram to ourselves went through the queue."""
    tool = iptables()
    if tool is None:
        return "no iptables (apt-get install iptables)"
    probe_rule = ["INPUT", "-i", "lo", "-p", "udp", "--dport", "9", "-j", "NFQUEUE",
                  "--queue-num", str(queue)]
    added = subprocess.run([tool, "-A", *probe_rule], capture_output=True, text=True,
                           timeout=30, check=False)
    if added.returncode != 0:
        return f"{tool} has no NFQUEUE target: {added.stderr.strip()}"
    try:
        with open_queue(queue) as sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"probe", ("127.0.0.1", 9))
            if not select.select([sock], [], [], 5.0)[0]:
                return "a packet sent into NFQUEUE never reached the queue"
            ids = packet_ids(sock.recv(1 << 16))
            if ids:
                sock.send(_verdict(queue, NF_ACCEPT, ids[-1], batch=True))
            return None if ids else "NFQUEUE sent no packet"
    except OSError as error:
        return f"nfnetlink_queue: {error}"
    finally:
        subprocess.run([tool, "-D", *probe_rule], capture_output=True, timeout=30, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="of the loss's random.Random")
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--dev", default="eth0")
    parser.add_argument(MARKER, help="the test bed's namespace this runs in (a marker)")
    parser.add_argument("--probe", action="store_true",
                        help="check that NFQUEUE works here (exit 0), or say why not (exit 1)")
    args = parser.parse_args()
    if args.probe:
        why = probe(args.queue)
        print(why or "nfqueue works", flush=True)
        return 0 if why is None else 1
    stop = [False]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.__setitem__(0, True))
    tool = iptables()
    if tool is None:
        raise SystemExit("delay_queue needs iptables (apt-get install iptables)")
    with open_queue(args.queue) as sock:  # bound before the rule, so none bypasses it
        subprocess.run([tool, "-A", *rule(args.dev, args.queue)], check=True)
        try:
            print("delaying", flush=True)
            delayed, dropped = run(sock, args.queue, args.delay_ms / 1e3, stop,
                                   args.loss_pct / 100, args.seed)
        finally:
            subprocess.run([tool, "-D", *rule(args.dev, args.queue)], check=False)
    print(f"delayed {delayed} packets by {args.delay_ms} ms, dropped {dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
