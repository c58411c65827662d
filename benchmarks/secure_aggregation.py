"""Secure aggregation's cost and accuracy (issue #17).

1. Protocol cost without a network: one round of `paramserver.federated.secagg` for n
   clients on the digits MLP's 9,610 parameters, 10% of them dropping after masking: the
   neighbours k, each client's CPU time and bytes (its serialised SecureAggregate requests
   and answers, less the masked input a plain push sends anyway), the server's unmasking
   time. SecAgg+ keeps a client's cost ~ log n.
2. Digits, 10 clients, Dirichlet 0.5, 30 rounds, Flower's hyper-parameters (1 local epoch,
   client SGD lr 0.05, no momentum, batch 16), plain FedAvg vs `--secure-aggregation`, both
   `--simulate` and client processes: final accuracy, wall time, and the steady round time
   (median time between round openings in the server log, rounds 1-29) with and without.

    python -m benchmarks.secure_aggregation [--quick] [--seeds N] [--report FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from paramserver import serde
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import SecAggReply, SecAggRequest, Stage

LENGTH = 9610  # digits_mlp(): 64*128 + 128 + 128*10 + 10
FLOWER = ["--clients", "10", "--rounds", "30", "--partition", "dirichlet:0.5", "--fraction",
          "1.0", "--local-epochs", "1", "--client-lr", "0.05", "--client-momentum", "0",
          "--batch-size", "16", "--strategy", "fedavg"]


def _size(request: SecAggRequest | None = None, reply: SecAggReply | None = None) -> int:
    rpc = serde.RPCS["SecureAggregate"]
    return len(rpc.request_to_bytes(request)) if request else len(rpc.response_to_bytes(reply))


def protocol_round(n: int, drop: float = 0.1) -> dict[str, float]:
    """One in-memory round; per-client figures are means over the clients."""
    rng = np.random.default_rng(n)
    server = Aggregation(0, LENGTH, 1.0, 0.6, 0)
    clients = [ClientRound(f"client-{i:04d}", 0, int(rng.integers(50, 200))) for i in range(n)]
    cpu = dict.fromkeys((c.client_id for c in clients), 0.0)
    up = dict.fromkeys(cpu, 0)
    down = dict.fromkeys(cpu, 0)

    def timed(client: ClientRound, fn, *args):  # type: ignore[no-untyped-def]
        started = time.process_time()
        out = fn(*args)
        cpu[client.client_id] += time.process_time() - started
        return out

    def send(client: ClientRound, stage: Stage, **fields: object) -> None:
        up[client.client_id] += _size(SecAggRequest("x" * 36, 0, stage, **fields))  # type: ignore[arg-type]

    for c in clients:
        keys = timed(c, c.advertise)
        send(c, Stage.ADVERTISE, keys=keys)
        server.advertise(keys)
    params = server.close_advertise()
    for c in clients:
        mine = server.params_for(c.client_id)
        down[c.client_id] += _size(reply=SecAggReply(params=mine))
        sealed = timed(c, c.share_keys, mine)
        send(c, Stage.SHARE_KEYS, sealed=sealed)
        server.share_keys(c.client_id, sealed)
    for c in clients:
        inbox = server.inbox(c.client_id)
        down[c.client_id] += _size(reply=SecAggReply(inbox=inbox))
        encoded = params.quantizer.encode(rng.normal(0, 0.05, LENGTH), c.weight)
        masked = timed(c, c.mask, inbox, encoded)
        server.masked_input(c.client_id, masked)
    survivors = server.close_masked()
    dropped = set(rng.choice([c.client_id for c in clients], int(drop * n), replace=False))
    for c in clients:
        down[c.client_id] += _size(reply=SecAggReply(survivors=tuple(sorted(survivors))))
        if c.client_id in dropped:
            continue
        revealed = timed(c, c.unmask, survivors)
        send(c, Stage.UNMASK, revealed=revealed)
        server.unmask(c.client_id, revealed)
    started = time.process_time()
    server.sum()
    return {"clients": n, "neighbours": len(server.inbox(clients[0].client_id)),
            "threshold": params.threshold, "dropped_after_masking": len(dropped),
        "client_cpu_s": statistics.mean(cpu.values()),
        "client_extra_up_bytes": statistics.mean(up.values()),
        "client_down_bytes": statistics.mean(down.values()),
        "server_unmask_s": time.process_time() - started}


def round_seconds(server_log: Path) -> list[float]:
    """Steady per-round times from the server's INFO log: between consecutive round
    openings ("round r: sampled"), from round 1 on (round 0 holds the processes' start-up)."""
    opened = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
              for line in server_log.read_text().splitlines() if ": sampled " in line]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(opened[1:])]


def federation(secure: bool, simulate: bool, seed: int) -> dict:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory(prefix="ps-secagg-bench-") as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([*harness.CLI, "federated", *FLOWER, "--seed", str(seed),
                        "--report", str(report), "--run-dir", str(Path(tmp) / "run"),
                        "--log-level", "INFO", *(["--simulate"] if simulate else []),
                        *(["--secure-aggregation"] if secure else [])],
                       check=True, capture_output=True, text=True, cwd=harness.REPO, timeout=900)
        result = json.loads(report.read_text())
        result["round_s"] = round_seconds(Path(tmp) / "run" / "server-0.log")
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="protocol cost only, n <= 100")
    parser.add_argument("--seeds", type=int, default=1, help="partition seeds (1)")
    parser.add_argument("--processes", action="store_true",
                        help="also run the federations with client processes")
    parser.add_argument("--report", type=Path,
                        help="write every figure here (default: runs/secure_aggregation-*.json)")
    args = parser.parse_args()
    protocol = []
    print(f"{'clients':>7} {'k':>3} {'t':>3} {'client cpu s':>12} {'extra up B':>10} "
          f"{'down B':>8} {'server s':>8}")
    for n in (10, 100) if args.quick else (10, 100, 300):
        cost = protocol_round(n)
        protocol.append(cost)
        print(f"{n:>7} {cost['neighbours']:>3} {cost['threshold']:>3} {cost['client_cpu_s']:>12.4f}"
              f" {cost['client_extra_up_bytes']:>10.0f} {cost['client_down_bytes']:>8.0f}"
              f" {cost['server_unmask_s']:>8.3f}", flush=True)
    runs: list[dict[str, Any]] = []
    for simulate in ([] if args.quick else [True, *([False] if args.processes else [])]):
        for seed in range(args.seeds):
            try:
                pair = {secure: federation(secure, simulate, seed) for secure in (False, True)}
            except subprocess.CalledProcessError as error:  # a loaded machine: say so, go on
                print(f"{'simulate' if simulate else 'processes'} seed {seed}: a run failed: "
                      f"{error.stdout[-300:] if error.stdout else error}", flush=True)
                runs.append({"simulate": simulate, "seed": seed, "failed": True})
                continue
            row: dict[str, Any] = {"simulate": simulate, "seed": seed,
                   **{f"{'secure' if s else 'plain'}_{key}": r[key] for s, r in pair.items()
                      for key in ("wall_s", "bytes_pushed", "bytes_pulled")},
                   "plain_accuracy": pair[False]["round_accuracy"][-1],
                   "secure_accuracy": pair[True]["round_accuracy"][-1],
                   "plain_round_s": statistics.median(pair[False]["round_s"]),
                   "secure_round_s": statistics.median(pair[True]["round_s"]),
                   "identical_accuracy_curves": pair[False]["round_accuracy"]
                   == pair[True]["round_accuracy"]}
            row["extra_s_per_round"] = (statistics.median(pair[True]["round_s"])
                                        - statistics.median(pair[False]["round_s"]))
            runs.append(row)
            print(f"{'simulate' if simulate else 'processes'} seed {seed}: accuracy plain "
                  f"{row['plain_accuracy']:.4f} secure {row['secure_accuracy']:.4f} (curves "
                  f"identical: {row['identical_accuracy_curves']}); wall "
                  f"{row['plain_wall_s']:.1f} s vs {row['secure_wall_s']:.1f} s; median "
                  f"steady round {row['plain_round_s']:.3f} s vs {row['secure_round_s']:.3f} s "
                  f"({row['extra_s_per_round']:+.3f} s)", flush=True)
    harness.write_report(harness.report_path("secure_aggregation", args.report),
                         {"protocol": protocol, "federations": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
