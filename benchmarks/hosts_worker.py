"""One worker of `python -m benchmarks.hosts`, run inside a test-bed host (its own network
namespace and link): timed sync steps of ours, or of gloo all-reduce, written as JSON.

    python -m benchmarks.hosts_worker ours --servers IP:P,... --rank R --mb 100 --codec none
    python -m benchmarks.hosts_worker gloo --init FILE --rank R --world W --mb 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.blob import Blob

TIMEOUT_S = 300.0
LR, MOMENTUM = 0.001, 0.9  # as the suite (benchmarks/suite/ours.py)


def ours(args: argparse.Namespace) -> dict[str, Any]:
    from paramserver.types import CodecSpec
    from workers import ParameterClient

    model = Blob(args.mb)
    with ParameterClient(args.servers.split(","), f"worker-{args.rank}", timeout_s=TIMEOUT_S,
                         push_codecs=[CodecSpec.parse(args.codec)],
                         pull_codecs=[CodecSpec.parse(args.pull_codec)]) as client:
        client.attach(model)
        model.set_gradients()
        for _ in range(args.warmup):  # sync steps keep the workers in lockstep from here
            client.step()
        up, down = client.gradient_bytes_pushed, client.bytes_pulled
        wire = _link_bytes()
        steps = []
        for _ in range(args.reps):
            started = time.perf_counter()
            client.step()
            steps.append(time.perf_counter() - started)
        return {"steps": steps, "bytes_up": (client.gradient_bytes_pushed - up) // args.reps,
                "bytes_down": (client.bytes_pulled - down) // args.reps,
                **_per_step(wire, _link_bytes(), args.reps)}


def _link_bytes() -> tuple[int, int]:
    """(sent, received) bytes of this host's link so far, headers included."""
    stats = Path("/sys/class/net/eth0/statistics")
    return (int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text()))


def _per_step(before: tuple[int, int], after: tuple[int, int], reps: int) -> dict[str, int]:
    return {"wire_tx": (after[0] - before[0]) // reps, "wire_rx": (after[1] - before[1]) // reps}


def gloo(args: argparse.Namespace) -> dict[str, Any]:
    import torch.distributed as dist

    from benchmarks.suite.peers import allreduce_step

    os.environ["GLOO_SOCKET_IFNAME"] = "eth0"  # the host's own link
    dist.init_process_group("gloo", init_method=f"file://{args.init}", rank=args.rank,
                            world_size=args.world)
    try:
        model = Blob(args.mb)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

        def step() -> None:
            allreduce_step(params, optimizer, args.world)

        for _ in range(args.warmup):
            step()
        dist.barrier()
        wire = _link_bytes()
        steps = []
        for _ in range(args.reps):
            started = time.perf_counter()
            step()
            steps.append(time.perf_counter() - started)
        return {"steps": steps, **_per_step(wire, _link_bytes(), args.reps)}
    finally:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["ours", "gloo"])
    parser.add_argument("--servers", default="")
    parser.add_argument("--init", default="")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--mb", type=float, required=True)
    parser.add_argument("--codec", default="none")
    parser.add_argument("--pull-codec", default="none")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the processes share the machine's cores
    result = ours(args) if args.system == "ours" else gloo(args)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
