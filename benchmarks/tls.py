"""What TLS costs: one worker's push + pull of a 100 MB model, plaintext against mutual TLS.

Two server processes run side by side on loopback, one plaintext and one with mutual TLS
(a throwaway CA, as `launch --tls` makes); one client in this process registers the same
model on both, then alternates steps between them so load on the machine hits both alike.
A step is a push of every gradient and a pull of the new version (sync, one worker).
Prints the median step of each and the ratio (issue #13's target: TLS <= 1.3x plaintext).

    python -m benchmarks.tls [--mb 100] [--reps 5] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from paramserver.cli.local_cluster import LocalCluster
from paramserver.security.certs import write_cluster
from paramserver.security.credentials import ClientSecurity
from paramserver.security.roles import AccessRole
from paramserver.types import ModelLayout, TensorSpec

WARMUP = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="model size in MB (100)")
    parser.add_argument("--reps", type=int, default=5, help="timed steps per server (5)")
    parser.add_argument("--report", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()

    import torch

    from workers.connection import ServerConnection

    elements = int(args.mb * 1e6 / 4)
    spec = TensorSpec("w", (elements,), torch.float32)
    grad = np.full(elements, 1e-6, dtype="<f4").data.cast("B")
    initial = np.zeros(elements, dtype="<f4").data.cast("B")
    target = np.empty(elements * 4, dtype=np.uint8)

    def sink(tensor: int, offset: int, data: memoryview) -> None:
        target[offset:offset + data.nbytes] = np.frombuffer(data, dtype=np.uint8)

    with tempfile.TemporaryDirectory(prefix="ps-bench-tls-") as tmp:
        files = write_cluster(Path(tmp) / "tls", ["127.0.0.1"], {"bench": AccessRole.WORKER})
        cert, key = files.clients["bench"]
        tls_flags = ["--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
                     "--tls-client-ca", str(files.ca)]
        serve = ["--workers", "1", "--lr", "1e-6", "--momentum", "0", "--lease-timeout", "0"]
        with LocalCluster(Path(tmp) / "run") as cluster:
            [(_, plain_address)] = cluster.start_servers(1, serve)
            [(_, tls_address)] = cluster.start_servers(1, [*serve, *tls_flags], first_index=1)
            connections = {
                "plaintext": ServerConnection(plain_address, timeout_s=300, retry_s=0),
                "mutual TLS": ServerConnection(
                    tls_address, timeout_s=300, retry_s=0,
                    security=ClientSecurity.from_files(files.ca, cert, key)),
            }
            versions = {}
            for name, connection in connections.items():
                connection.handshake("bench")
                connection.register(ModelLayout((spec,)), [initial])
                versions[name] = 0
            steps: dict[str, list[float]] = {name: [] for name in connections}
            for rep in range(WARMUP + args.reps):
                for name, connection in connections.items():
                    started = time.perf_counter()
                    connection.push(versions[name], [spec], [grad])
                    versions[name] = connection.pull(versions[name] + 1, sink).version
                    if rep >= WARMUP:
                        steps[name].append(time.perf_counter() - started)
            for connection in connections.values():
                connection.close()
    plain, tls = (statistics.median(steps[n]) for n in ("plaintext", "mutual TLS"))
    ratio = tls / plain
    print(f"{args.mb:g} MB push+pull, median of {args.reps}: plaintext {plain * 1e3:.0f} ms "
          f"({2 * args.mb / plain / 1e3:.2f} GB/s), mutual TLS {tls * 1e3:.0f} ms "
          f"({2 * args.mb / tls / 1e3:.2f} GB/s), ratio {ratio:.2f}x (target <= 1.3x)")
    if args.report is not None:
        args.report.write_text(json.dumps({"mb": args.mb, "reps": args.reps, "steps_s": steps,
                                           "plaintext_s": plain, "tls_s": tls,
                                           "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
