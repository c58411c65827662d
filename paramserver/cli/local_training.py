"""Train a built-in model (digits MLP or CTR) on a local cluster: N server processes (the
model sharded over them), M worker processes, and a report of the run. The library behind
`paramserver launch`.

It lives in `cli/`, the composition root, because it wires both sides: it starts servers
from a `ServerConfig` and workers from a `TrainConfig`, and reads results with the client.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramserver.cli.local_cluster import ClusterError, LocalCluster, ManagedProcess
from paramserver.cli.security_options import (
    client_flags,
    client_security,
    make_local_cluster_tls,
    server_flags,
)
from paramserver.cli.server_options import serve_args
from paramserver.errors import ParamServerError
from paramserver.security.certs import ClusterFiles
from paramserver.security.credentials import ClientSecurity
from paramserver.security.roles import AccessRole
from paramserver.server.config import ServerConfig
from paramserver.types import Mode
from workers.connection import ServerConnection
from workers.trainer import TrainConfig, evaluate_server_model, total_steps


@dataclass(frozen=True)
class LocalTraining:
    """What to run: every server gets `server`, every worker `worker` with its own rank."""

    server: ServerConfig
    worker: TrainConfig  # servers, worker_id, rank and num_workers are filled in per worker
    servers: int = 1
    workers: int = 2
    timeout_s: float = 600.0  # the whole run; then every process is stopped
    log_level: str = "WARNING"
    tls: bool = False  # mutual TLS with a throwaway CA (run_dir/tls), each worker its cert

    def __post_init__(self) -> None:
        if self.servers < 1 or self.workers < 1:
            raise ValueError("--servers and --workers must be at least 1")
        if self.worker.ef_momentum and self.server.optimizer.momentum:
            raise ValueError(f"--ef-momentum {self.worker.ef_momentum} moves momentum to the "
                             f"workers, which the server's --momentum "
                             f"{self.server.optimizer.momentum} already does for top-k on its "
                             f"own: drop --ef-momentum, or pass --momentum 0 with it")

    @property
    def updates(self) -> int:
        """Versions the servers reach: one per step in sync, one per push otherwise."""
        template = dataclasses.replace(self.worker, num_workers=self.workers)
        steps = total_steps(template)
        return steps if self.server.mode is Mode.SYNC else steps * self.workers


@dataclass(frozen=True)
class TrainingReport:
    """A finished run: the global model's accuracy and what it took (the --report JSON)."""

    accuracy: float  # the test metric named by `metric`
    steps: int  # the servers' final version
    wall_s: float
    bytes_pushed: int
    bytes_pulled: int
    mode: str
    codec: str
    pull_codec: str
    compression_ratio: float  # uncompressed / sent gradient bytes, over all workers
    servers: int
    workers: int
    shard_bytes: list[int]
    epochs: int
    data: str
    worker_accuracy: list[float]
    worker_step_s: list[float]
    worker_versions: list[int]  # the version of each worker's final model
    metric: str = "accuracy"  # "accuracy" (digits) or "auc" (ctr)

    def diverged(self) -> bool:
        """A sync job whose workers ended on different models (a bug, or a restart that
        did not re-form the job): the caller warns."""
        return self.mode == Mode.SYNC.value and len(set(self.worker_versions)) > 1


def run_local_training(job: LocalTraining, run_dir: Path,
                       on_version: Callable[[int], None] | None = None) -> TrainingReport:
    """Start the cluster, train until every worker exits, evaluate, stop everything.

    `on_version` sees the first shard's version while training runs (a progress bar).
    Raises ClusterError (with the failing process's log tail) if anything fails or the
    run outlives `job.timeout_s`.
    """
    started = time.perf_counter()
    tls = _cluster_tls(job, run_dir)
    mine = client_security(tls)  # the launcher's own (admin) credential
    with LocalCluster(run_dir) as cluster:
        servers = cluster.start_servers(job.servers, [
            *serve_args(_per_shard(job.server)), *server_flags(tls),
            "--log-level", job.log_level])
        addresses = ",".join(address for _, address in servers)
        reports = [run_dir / f"worker-{rank}.json" for rank in range(job.workers)]
        workers = [cluster.spawn(f"worker-{rank}",
                                 _worker_args(job, rank, addresses, report, tls))
                   for rank, report in enumerate(reports)]
        _wait(cluster, [m for m, _ in servers], workers, addresses, job, on_version, mine)
        accuracy, version = evaluate_server_model(addresses, security=mine,
                                                  model=job.worker.model,
                                                  ctr_spec=job.worker.ctr_spec,
                                                  table_optimizer=job.worker.table_optimizer,
                                                  seed=job.worker.seed)
        shard_bytes = _shard_bytes(addresses, mine)
        for managed, _ in servers:
            cluster.stop(managed)
    worker_reports = [json.loads(path.read_text()) for path in reports]
    return TrainingReport(
        accuracy=accuracy, steps=version, wall_s=time.perf_counter() - started,
        bytes_pushed=sum(r["bytes_pushed"] for r in worker_reports),
        bytes_pulled=sum(r["bytes_pulled"] for r in worker_reports),
        mode=job.server.mode.value, codec=worker_reports[0]["codec"],
        pull_codec=worker_reports[0]["pull_codec"],
        compression_ratio=_overall_ratio(worker_reports), servers=job.servers,
        workers=job.workers, shard_bytes=shard_bytes, epochs=job.worker.epochs,
        data=job.worker.data, worker_accuracy=[r["accuracy"] for r in worker_reports],
        worker_step_s=[r["wall_s"] / max(r["steps"], 1) for r in worker_reports],
        worker_versions=[r["version"] for r in worker_reports],
        metric=worker_reports[0].get("metric", "accuracy"))


def _cluster_tls(job: LocalTraining, run_dir: Path) -> ClusterFiles | None:
    """With `job.tls`: a throwaway CA in run_dir/tls and a certificate per worker."""
    if not job.tls:
        return None
    return make_local_cluster_tls(run_dir / "tls", {f"worker-{rank}": AccessRole.WORKER
                                                   for rank in range(job.workers)})


def _per_shard(config: ServerConfig) -> ServerConfig:
    """One checkpoint directory per shard: '{index}' in the path, or a shard-{index} below."""
    if config.checkpoint_dir is None or "{index}" in str(config.checkpoint_dir):
        return config
    return dataclasses.replace(config, checkpoint_dir=config.checkpoint_dir / "shard-{index}")


def _worker_args(job: LocalTraining, rank: int, servers: str, report: Path,
                 tls: ClusterFiles | None) -> list[str]:
    """`paramserver worker` arguments for one rank of `job`."""
    worker = job.worker
    return ["worker", "--servers", servers, "--rank", str(rank), "--num-workers",
            str(job.workers), "--worker-id", f"worker-{rank}", "--epochs", str(worker.epochs),
            "--batch-size", str(worker.batch_size), "--data", worker.data,
            "--seed", str(worker.seed), "--codec", " ".join(str(c) for c in worker.codecs),
            "--pull-codec", " ".join(str(c) for c in worker.pull_codecs),
            "--report", str(report), "--log-level", job.log_level,
            "--ef-momentum", str(worker.ef_momentum), "--model", worker.model,
            "--ctr-spec", worker.ctr_spec, "--table-optimizer", worker.table_optimizer,
            *([] if worker.error_feedback else ["--no-error-feedback"]),
            *(["--shm"] if worker.shm else []),
            *client_flags(tls, f"worker-{rank}")]


def _overall_ratio(reports: list[dict[str, Any]]) -> float:
    """Uncompressed / sent gradient bytes over all workers (each report has its own ratio)."""
    sent = sum(r["bytes_pushed_gradients"] for r in reports)
    dense = sum(r["bytes_pushed_gradients"] * r["compression_ratio"] for r in reports)
    return dense / sent if sent else 1.0


def _shard_bytes(addresses: str, security: ClientSecurity | None) -> list[int]:
    sizes = []
    for address in addresses.split(","):
        connection = ServerConnection(address, timeout_s=10.0, security=security)
        try:
            layout = connection.status().layout
            sizes.append(layout.nbytes if layout else 0)
        finally:
            connection.close()
    return sizes


def _wait(cluster: LocalCluster, servers: list[ManagedProcess], workers: list[ManagedProcess],
          addresses: str, job: LocalTraining,
          on_version: Callable[[int], None] | None, security: ClientSecurity | None) -> None:
    """Until every worker exits: fail fast on a failed process or the deadline, and pass
    the first shard's version to `on_version`."""
    deadline = time.monotonic() + job.timeout_s
    connection = ServerConnection(addresses.split(",")[0], timeout_s=2.0, security=security)
    try:
        while any(w.process.poll() is None for w in workers):
            cluster.check_failed(workers)
            for server in servers:
                if server.process.poll() is not None:
                    raise ClusterError(f"{server.name} exited early:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"training did not finish within {job.timeout_s}s")
            if on_version is not None:
                try:
                    on_version(connection.status().version)
                except ParamServerError:
                    pass  # the server may be busy; the next poll will tell
            time.sleep(0.2)
        cluster.check_failed(workers)
    finally:
        connection.close()
