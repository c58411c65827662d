"""Overlap of gradient pushes with backward (issue #6): step time with and without it.

One worker (this process) trains an MLP of LAYERS x Linear(WIDTH, WIDTH) against a sync
`paramserver serve` process. The worker's link is capped (token bucket, both directions) so
that communication is time on a wire, as between machines, rather than CPU that backward
also needs on this 2-core box; the batch is sized so backward and the push take a similar
time. Modes alternate step by step in one session, so drift hits both alike.

    hidden share = (step without overlap - step with overlap) / min(backward, push)

The denominator is what overlap can hide at most: a push can only run under the backward
that produces its gradients. Target: at least half.

    python -m benchmarks.overlap [--quick] [--report FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch
from torch import nn

from benchmarks import harness
from benchmarks.measure import stat
from benchmarks.shaping import capped_links
from paramserver.cli.local_cluster import LocalCluster
from paramserver.transport import parse_bandwidth
from workers import attach

WIDTH, LAYERS, BATCH = 1024, 8, 256
# One torch thread: the server process shares this 2-core machine (between machines it
# would not), and torch's two intra-op threads would fight the push thread and the server
# for the cores; --threads 0 measures that case too (RESULTS.md has both).
THREADS = 1
QUICK = (512, 4, 256)
LINK = "2gbit"
WARMUP, REPS, QUICK_REPS = 3, 10, 3


def build(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 3 reps")
    parser.add_argument("--link", default=LINK, help=f"emulated link speed ({LINK})")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch intra-op threads ({THREADS}; 0: torch's default)")
    parser.add_argument("--batch", type=int, help=f"batch size ({BATCH})")
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/overlap-*.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, layers, batch = QUICK if args.quick else (WIDTH, LAYERS, BATCH)
    batch = args.batch or batch
    reps = QUICK_REPS if args.quick else REPS
    model = build(width, layers)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    x, y = torch.randn(batch, width), torch.randn(batch, width)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    timings: dict[str, list[float]] = {"forward": [], "backward": [], "push": [], "pull": [],
                                       "step_plain": [], "step_overlap": [],
                                       "overlap_fwd_bwd": [], "overlap_wait": []}
    with tempfile.TemporaryDirectory(prefix="ps-overlap-") as run_dir, \
            LocalCluster(Path(run_dir)) as cluster:
        [(_, address)] = cluster.start_servers(1, ["--mode", "sync", "--workers", "1",
                                                   "--lr", "0.0001", "--momentum", "0"])
        with attach(model, address, worker_id="bench", timeout_s=600,
                    shaper_factory=capped_links(parse_bandwidth(args.link))) as ps:
            for rep in range(WARMUP + reps):
                keep = rep >= WARMUP
                # Without overlap, timed piece by piece: forward, backward, push, pull.
                ps.overlap = False
                model.zero_grad()
                t0 = time.perf_counter()
                value = loss()
                t1 = time.perf_counter()
                value.backward()
                t2 = time.perf_counter()
                ps.client.push()
                t3 = time.perf_counter()
                ps.client.pull([v + 1 for v in ps.client.versions])
                t4 = time.perf_counter()
                # With overlap: the same step as a training loop runs it.
                ps.overlap = True
                model.zero_grad()
                t5 = time.perf_counter()
                loss().backward()
                t5b = time.perf_counter()
                ps.step()
                t6 = time.perf_counter()
                if keep:
                    for key, seconds in (("forward", t1 - t0), ("backward", t2 - t1),
                                         ("push", t3 - t2), ("pull", t4 - t3),
                                         ("step_plain", t4 - t0), ("step_overlap", t6 - t5),
                                         ("overlap_fwd_bwd", t5b - t5), ("overlap_wait", t6 - t5b)):
                        timings[key].append(seconds)
            parts = ps.parts_pushed
    med = {k: statistics.median(v) for k, v in timings.items()}
    hideable = min(med["backward"], med["push"])
    hidden = (med["step_plain"] - med["step_overlap"]) / hideable
    print(f"model {model_bytes / 1e6:.1f} MB ({layers} x Linear({width}, {width})), batch "
          f"{batch}, link {args.link}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}, {reps} reps")
    for key, values in timings.items():
        spread = stat(values)
        print(f"  {key:<13} {1e3 * spread['median']:8.1f} ms  "
              f"({1e3 * spread['min']:.1f}-{1e3 * spread['max']:.1f})")
    harness.write_report(harness.report_path("overlap", args.report), {
        "cpus": os.cpu_count(), "grpcio": grpc.__version__, "torch": torch.__version__,
        "model_bytes": model_bytes, "width": width, "layers": layers, "batch": batch,
        "link": args.link, "reps": reps, "torch_threads": torch.get_num_threads(),
        "parts_pushed": parts, "timings": {k: stat(v) for k, v in timings.items()},
        "hideable_s": hideable, "hidden_share": hidden,
    })
    print(f"hideable min(backward, push) {1e3 * hideable:.1f} ms; hidden "
          f"{1e3 * (med['step_plain'] - med['step_overlap']):.1f} ms = {hidden:.2f} of it; "
          f"step speed-up x{med['step_plain'] / med['step_overlap']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
