"""Run a local federation on digits: one server process running the rounds, N clients (as
processes, or as threads of this process to simulate many), an observer scoring the global
model after each round, and a report. The library behind `paramserver federated`.

It lives in `cli/`, the composition root, because it wires both sides: it starts the server
from a `ServerConfig` and the clients from `workers.federation`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from paramserver.cli.local_cluster import LocalCluster, ManagedProcess
from paramserver.cli.security_options import (
    client_flags,
    client_security,
    make_local_cluster_tls,
    server_flags,
)
from paramserver.cli.server_options import serve_args
from paramserver.security.certs import ClusterFiles
from paramserver.security.roles import AccessRole
from paramserver.server.config import ServerConfig
from paramserver.status import ServerStatus
from paramserver.types import CodecSpec, Mode
from workers.federated import LocalTraining
from workers.federation import follow_rounds, run_client
from workers.population import Population, PopulationReport, run_population
from workers.probes import probe_status


@dataclass(frozen=True)
class LocalFederation:
    """What to run: the server's config (its mode federated or fedbuff) and the clients'."""

    server: ServerConfig
    training: LocalTraining
    clients: int = 10
    rounds: int = 30
    partition: str = "iid"  # iid, dirichlet:ALPHA or quantity:ALPHA
    codecs: tuple[CodecSpec, ...] = (CodecSpec("none"),)
    seed: int = 0  # partition and shuffling
    strategy: str = "fedavg"  # recorded in the report; the server config already applies it
    simulate: bool = False  # clients as threads of this process
    log_level: str = "WARNING"
    tls: bool = False  # mutual TLS with a throwaway CA (run_dir/tls), each client its cert
    shards: int = 1  # server shards the model is split over (shard 0 leads the rounds)
    lazy: bool = False  # simulate: a client exists only in the rounds it is sampled for

    def __post_init__(self) -> None:
        if self.server.mode not in (Mode.FEDERATED, Mode.FEDBUFF):
            raise ValueError("--mode must be federated or fedbuff")
        if self.shards < 1 or (self.shards > 1 and self.server.mode is not Mode.FEDERATED):
            raise ValueError("--shards must be at least 1, and 1 under fedbuff")
        if self.lazy and not self._lazy_fits():
            raise ValueError("--lazy needs --simulate, one shard, no TLS, no "
                             "--secure-aggregation, and the server's --population equal to "
                             "--clients")
        if self.training.secure_aggregation != self.server.federated.secure_aggregation:
            raise ValueError("the server and the clients must agree on --secure-aggregation")

    def _lazy_fits(self) -> bool:
        """Lazy clients are simulated plain clients of one server (workers/population.py)."""
        federated = self.server.federated
        return (self.simulate and self.shards == 1 and not self.tls
                and not federated.secure_aggregation and federated.population == self.clients)


@dataclass(frozen=True)
class FederationReport:
    """A finished federation (the --report JSON)."""

    round_accuracy: list[float]  # the global model's test accuracy after each round
    rounds: int
    wall_s: float
    bytes_pushed: int
    bytes_pulled: int
    dropouts: list[str]  # client@round
    skipped_rounds: list[int]
    clients: int
    strategy: str
    partition: str
    mode: str
    fraction: float
    local_epochs: int
    codec: str
    weighting: str
    client_examples: list[int] = field(default_factory=list)
    privacy: dict[str, Any] | None = None  # --dp: the server's PrivacyReport at the end
    round_epsilon: list[float] = field(default_factory=list)  # --dp: epsilon after each round
    shards: int = 1
    # Per shard: how its last rounds closed ({round, sampled, counted, skipped}, from status).
    shard_rounds: list[list[dict[str, Any]]] = field(default_factory=list)
    # Peak resident memory (MB): this process (the simulated clients, the observer) and
    # the server (shard 0); 0 where the platform does not say.
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # Reproducibility (issue #17): the final global model's SHA-256 (the same seed gives the
    # same digest), and the rounds whose accuracy is a later model's (the observer missed
    # their version; nothing else about the run changes).
    model_sha256: str = ""
    unobserved_rounds: list[int] = field(default_factory=list)
    model: str = "mlp"  # the digits model the clients trained (--model)


def run_local_federation(job: LocalFederation, run_dir: Path,
                         on_round: Callable[[int, float], None],
                         on_epsilon: Callable[[int, float], None] | None = None,
                         ) -> FederationReport:
    """Start the server and the clients, follow the rounds, stop everything.

    `on_round(round, accuracy)` sees each round's accuracy as it closes, and with --dp
    `on_epsilon(round, epsilon)` the privacy spent by then (before on_round). Raises
    ClusterError if a process fails, RuntimeError if no client is left before the end.
    """
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if job.simulate:  # the clients already run in parallel; torch's pool only adds cost
        torch.set_num_threads(1)  # (as OMP_NUM_THREADS=1 in client processes)
    try:
        report = _run(job, run_dir, on_round, on_epsilon)
    finally:
        torch.set_num_threads(threads)
    return dataclasses.replace(report, wall_s=time.perf_counter() - started)


def _run(job: LocalFederation, run_dir: Path, on_round: Callable[[int, float], None],
         on_epsilon: Callable[[int, float], None] | None) -> FederationReport:
    started = time.perf_counter()
    epsilons: list[float] = []
    tls = (make_local_cluster_tls(run_dir / "tls", {f"client-{i}": AccessRole.WORKER
                                                   for i in range(job.clients)})
           if job.tls else None)
    with LocalCluster(run_dir) as cluster:
        servers = cluster.start_servers(job.shards, [*serve_args(job.server),
                                                     *server_flags(tls),
                                                     "--log-level", job.log_level])
        address = ",".join(a for _, a in servers)
        clients: _Clients = (_LazyClients(job, address) if job.lazy
                             else _ThreadClients(job, address, tls) if job.simulate
                             else _ProcessClients(job, address, cluster, tls))
        security = client_security(tls)
        leader = servers[0][1]

        def scored(round_: int, value: float) -> None:
            if job.server.dp.on:  # the accountant has spent this round before it applied
                current = probe_status(leader, security=security)
                epsilons.append(current.privacy.epsilon if current and current.privacy
                                else float("nan"))
                if on_epsilon is not None:
                    on_epsilon(round_, epsilons[-1])
            on_round(round_, value)

        followed = follow_rounds(address, job.rounds, scored, clients.alive,
                                 security=security, model_name=job.training.model)
        statuses = [probe_status(a, security=security) for _, a in servers]
        reports = clients.finish()
        memory = {"local": peak_rss_mb(), "server": peak_rss_mb(servers[0][0].process.pid)}
        for server, _ in servers:
            cluster.stop(server)
    report = _report(job, followed.accuracy, time.perf_counter() - started, reports,
                     statuses, epsilons)
    return dataclasses.replace(report, peak_rss_mb=memory,
                               model_sha256=followed.model_sha256,
                               unobserved_rounds=followed.unobserved())


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident set size of process `pid` (None: this one) in MB, from /proc (Linux);
    0.0 when unknown."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _report(job: LocalFederation, accuracies: list[float], wall_s: float,
            reports: list[dict[str, Any]],
            statuses: list[ServerStatus | None], epsilons: list[float]) -> FederationReport:
    final = statuses[0]
    return FederationReport(
        round_accuracy=accuracies, rounds=len(accuracies), wall_s=wall_s,
        bytes_pushed=sum(r["bytes_pushed"] for r in reports),
        bytes_pulled=sum(r["bytes_pulled"] for r in reports),
        dropouts=list(final.dropouts) if final else [],
        skipped_rounds=list(final.skipped_rounds) if final else [],
        clients=job.clients, strategy=job.strategy, partition=job.partition,
        mode=job.server.mode.value, fraction=job.server.federated.fraction,
        local_epochs=job.training.epochs, codec=" ".join(str(c) for c in job.codecs),
        weighting=job.training.weighting,
        client_examples=sorted(r["examples"] for r in reports), shards=job.shards,
        shard_rounds=[[dataclasses.asdict(c) for c in (s.rounds if s else ())]
                      for s in statuses],
        privacy=dataclasses.asdict(final.privacy) if final and final.privacy else None,
        round_epsilon=epsilons, model=job.training.model)


class _Clients:
    """A running group of clients: are any still alive, and their reports once done."""

    def alive(self) -> bool:
        raise NotImplementedError

    def finish(self) -> list[dict[str, Any]]:
        raise NotImplementedError


class _ThreadClients(_Clients):
    def __init__(self, job: LocalFederation, address: str, tls: ClusterFiles | None) -> None:
        self.tls = tls
        self.reports: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._client, args=(job, address, i),
                                         daemon=True) for i in range(job.clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, job: LocalFederation, address: str, index: int) -> None:
        try:
            report = run_client(address, index, job.clients, job.rounds, job.training,
                                job.partition, job.codecs, job.seed,
                                client_security(self.tls, f"client-{index}"))
            self.reports.append(dataclasses.asdict(report))
        except BaseException as error:  # noqa: BLE001 - finish() raises it
            self.errors.append(error)

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def finish(self) -> list[dict[str, Any]]:
        for thread in self.threads:
            thread.join(60)
        if self.errors:
            raise RuntimeError(f"a simulated client failed: {self.errors[0]!r}")
        return self.reports


class _LazyClients(_Clients):
    """Simulated clients created when sampled (`workers.population`), on a few threads."""

    def __init__(self, job: LocalFederation, address: str) -> None:
        self.population = Population(address, job.clients, job.rounds, job.training,
                                     job.server.federated, job.partition, job.codecs, job.seed)
        self.report: PopulationReport | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = run_population(self.population)
        except BaseException as error:  # noqa: BLE001 - finish() raises it
            self.error = error

    def alive(self) -> bool:
        return self.thread.is_alive()

    def finish(self) -> list[dict[str, Any]]:
        self.thread.join(60)
        if self.error is not None or self.report is None:
            raise RuntimeError(f"the simulated population failed: {self.error!r}")
        r = self.report
        return [{"bytes_pushed": r.bytes_pushed if i == 0 else 0,  # totals, counted once
                 "bytes_pulled": r.bytes_pulled if i == 0 else 0, "examples": n}
                for i, n in enumerate(r.client_examples)]


class _ProcessClients(_Clients):
    def __init__(self, job: LocalFederation, address: str, cluster: LocalCluster,
                 tls: ClusterFiles | None) -> None:
        self.cluster = cluster
        self.paths = [cluster.run_dir / f"client-{i}.json" for i in range(job.clients)]
        self.procs: Sequence[ManagedProcess] = [
            cluster.spawn(f"client-{i}", [*_client_args(job, i, address, self.paths[i]),
                                          *client_flags(tls, f"client-{i}")])
            for i in range(job.clients)]

    def alive(self) -> bool:
        return any(p.process.poll() is None for p in self.procs)

    def finish(self) -> list[dict[str, Any]]:
        for managed in self.procs:
            managed.process.wait(60)
        self.cluster.check_failed(self.procs)
        return [json.loads(p.read_text()) for p in self.paths if p.exists()]


def _client_args(job: LocalFederation, index: int, address: str, report: Path) -> list[str]:
    """`paramserver client` arguments for client `index` of `job`."""
    t = job.training
    return ["client", "--servers", address, "--index", str(index), "--clients",
            str(job.clients), "--rounds", str(job.rounds), "--report", str(report),
            "--local-epochs", str(t.epochs), "--batch-size", str(t.batch_size),
            "--client-lr", str(t.lr), "--client-momentum", str(t.momentum),
            "--prox-mu", str(t.prox_mu), "--weighting", t.weighting,
            "--resample-to", str(t.resample_to), "--dropout", str(t.dropout),
            "--partition", job.partition, "--strategy", job.strategy,
            "--codec", " ".join(str(c) for c in job.codecs), "--seed", str(job.seed),
            "--log-level", job.log_level, "--model", t.model,
            *(["--secure-aggregation"] if t.secure_aggregation else [])]
