"""One worker of `python -m benchmarks.hosts`, run inside a test-bed host (its own network
namespace and link): timed sync steps of ours, of gloo all-reduce, or of the suite's
torch.distributed.rpc parameter server, written as JSON.

    python -m benchmarks.hosts_worker ours --servers IP:P,... --rank R --mb 100 --codec none
    python -m benchmarks.hosts_worker gloo --init FILE --rank R --world W --mb 100
    python -m benchmarks.hosts_worker rpc --master IP --rank R --world W+1 --mb 100

For `rpc`, rank 0 is the parameter server (and the tutorial's master, which drives the
trainers); ranks 1..W are trainers. Only rank 0 writes --out: every trainer's steps and the
bytes its host's link moved in the timed steps, read in the trainer's own namespace.
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
RPC_PORT = 29500  # the rpc peer's rendezvous (TCPStore) on the server host


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
        wire = link_bytes()
        steps = []
        for _ in range(args.reps):
            started = time.perf_counter()
            client.step()
            steps.append(time.perf_counter() - started)
        return {"steps": steps, "bytes_up": (client.gradient_bytes_pushed - up) // args.reps,
                "bytes_down": (client.bytes_pulled - down) // args.reps,
                **_per_step(wire, link_bytes(), args.reps)}


def link_bytes() -> tuple[int, int]:
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
        wire = link_bytes()
        steps = []
        for _ in range(args.reps):
            started = time.perf_counter()
            step()
            steps.append(time.perf_counter() - started)
        return {"steps": steps, **_per_step(wire, link_bytes(), args.reps)}
    finally:
        dist.destroy_process_group()


def rpc_peer(args: argparse.Namespace) -> dict[str, Any] | None:
    """The suite's rpc parameter server (benchmarks.suite.peers), rendezvous at the server
    host's address; TensorPipe and gloo on the host's own link."""
    from torch.distributed import rpc

    # The probe travels to the trainers by reference: name it by this module's real name
    # (run with -m, the module is __main__ here, and __main__.link_bytes would not resolve
    # in a process that is not this script).
    from benchmarks.hosts_worker import link_bytes as probe
    from benchmarks.suite.peers import (
        BatchUpdateParameterServer,
        drive_trainers,
        rpc_name,
        rpc_options,
    )

    # Both on the host's own link: without them TensorPipe's uv transport (ECONNREFUSED) and
    # the gloo group init_rpc makes (connectFullMesh: Connection refused) advertise the
    # address the hostname resolves to, 127.0.0.1 here (benchmarks/RESULTS.md).
    os.environ["TP_SOCKET_IFNAME"] = "eth0"
    os.environ["GLOO_SOCKET_IFNAME"] = "eth0"
    rpc.init_rpc(rpc_name(args.rank), rank=args.rank, world_size=args.world,
                 rpc_backend_options=rpc_options(f"tcp://{args.master}:{RPC_PORT}"))
    try:
        if args.rank != 0:
            return None  # a trainer serves the master's calls until shutdown
        ps_rref = rpc.RRef(BatchUpdateParameterServer(args.mb, args.world - 1))
        # The probe runs in each trainer's process: its own host's link counters.
        return {"trainers": [{"steps": t["steps"],
                              **_per_step(t["probe"][0], t["probe"][1], args.reps)}
                             for t in drive_trainers(ps_rref, args.world, args.mb,
                                                     args.warmup, args.reps,
                                                     probe=probe)]}
    finally:
        rpc.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["ours", "gloo", "rpc"])
    parser.add_argument("--servers", default="")
    parser.add_argument("--init", default="")
    parser.add_argument("--master", default="", help="rpc: the server host's IP")
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
    runs = {"ours": ours, "gloo": gloo, "rpc": rpc_peer}
    result = runs[args.system](args)
    if result is not None:
        args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
