"""Delay every TCP packet a test-bed host receives by a fixed time, without sch_netem: an
iptables NFQUEUE rule hands each packet to this process, which gives the kernel its verdict
(accept) DELAY ms after it arrived. Packets are not copied to user space (metadata only; GSO
packets stay whole), and one batch verdict releases every packet that is due, in order.

    ip netns exec NS python -m benchmarks.delay_queue --delay-ms 40 [--queue 0]

Run inside the host's namespace (root; needs `iptables-legacy` or `iptables`, and a kernel
with CONFIG_NETFILTER_NETLINK_QUEUE and the NFQUEUE target); runs until SIGTERM or SIGINT,
then removes its rule. Delaying what a host receives adds DELAY to every round trip through
it, at the packet level: TCP and HTTP/2 both see it. Delayed packets wait in the kernel's
queue; this process costs one small message per packet (at 1 Gbit/s with 64 KiB GSO packets,
about 2000 per second).
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NF_ACCEPT = 1
NLM_F_REQUEST, NLMSG_ERROR = 1, 2
QUEUE_MAXLEN = 65536


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, queue: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind,
                       NLM_F_REQUEST, 0, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def open_queue(queue: int) -> socket.socket:
    """A netlink socket bound to NFQUEUE `queue`: metadata only, GSO whole, a long queue."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack(
        "!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))))
    sock.send(_message(NFQNL_MSG_CONFIG, queue,
                       _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                       + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                       + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
                       + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))))
    return sock


def packet_ids(datagram: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink datagram."""
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


def run(queue: int, delay_s: float, stop: list[bool]) -> int:
    """Hold and release packets until `stop[0]`; the number of packets delayed."""
    sock = open_queue(queue)
    held: collections.deque[tuple[float, int]] = collections.deque()
    count = 0
    while not stop[0]:
        wait = 0.2 if not held else max(0.0, held[0][0] - time.monotonic())
        if select.select([sock], [], [], wait)[0]:
            now = time.monotonic()
            try:
                datagram = sock.recv(1 << 20)
            except OSError:  # ENOBUFS: ids lost, but the next batch verdict covers them
                continue
            for packet in packet_ids(datagram):
                held.append((now + delay_s, packet))
                count += 1
        now, last = time.monotonic(), None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:  # every queued packet up to `last` is accepted
            sock.send(_message(NFQNL_MSG_VERDICT_BATCH, queue, _attr(
                NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))))
    if held:
        sock.send(_message(NFQNL_MSG_VERDICT_BATCH, queue, _attr(
            NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, held[-1][1]))))
    sock.close()
    return count


def _iptables() -> str:
    for name in ("iptables-legacy", "iptables"):
        if shutil.which(name):
            return name
    raise SystemExit("delay_queue needs iptables (apt-get install iptables)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--dev", default="eth0")
    args = parser.parse_args()
    rule = ["INPUT", "-i", args.dev, "-p", "tcp", "-j", "NFQUEUE", "--queue-num",
            str(args.queue), "--queue-bypass"]  # no listener yet (or any more): pass
    stop = [False]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.__setitem__(0, True))
    iptables = _iptables()
    subprocess.run([iptables, "-A", *rule], check=True)
    try:
        print("delaying", flush=True)
        count = run(args.queue, args.delay_ms / 1e3, stop)
    finally:
        subprocess.run([iptables, "-D", *rule], check=False)
    print(f"delayed {count} packets by {args.delay_ms} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
