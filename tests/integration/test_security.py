"""Issue #13: every RPC against a real TLS server, with every kind of bad credential.

Two servers on 127.0.0.1: one with mutual TLS (identity and role in the client certificate),
one with TLS and bearer tokens. For each RPC and each credential the call gets the status
documented in the README's security table, and the model's state hash is unchanged.
Certificates are made once per module; the expired one is backdated in-test.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from paramserver import serde
from paramserver.cli.local_cluster import LocalCluster
from paramserver.cli.main import main as cli_main
from paramserver.cli.status import format_status
from paramserver.security.certs import CertificateAuthority, KeyPair
from paramserver.security.credentials import ClientSecurity, ServerSecurity, TokenTable
from paramserver.security.roles import AccessRole, Principal
from paramserver.server.app import RunningServer, start_server
from paramserver.server.auth import check_binding
from paramserver.server.config import ServerConfig
from paramserver.status import ServerStatus, WorkerInfo
from paramserver.tables import TablePlan, TableSpec
from paramserver.types import (
    ModelLayout,
    PullRequest,
    PushHeader,
    RegisterHeader,
    Role,
    RoundRequest,
    TensorSpec,
)
from tests.helpers import raw
from workers.connection import ServerConnection

REPO = Path(__file__).resolve().parents[2]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
OK = grpc.StatusCode.OK
WEIGHTS = torch.arange(12, dtype=torch.float32)
SPEC = TensorSpec.of("w", WEIGHTS)
LAYOUT = ModelLayout((SPEC,))
TOKENS = {"worker-0": "w0-token-0123456789abcdef", "worker-1": "w1-token-0123456789abcdef",
          "observer": "ob-token-0123456789abcdef", "admin": "ad-token-0123456789abcdef"}
RPCS = ("Handshake", "Register", "Push", "Pull", "Status", "Heartbeat", "JoinRound", "Leave")


@dataclasses.dataclass
class Cluster:
    ca: CertificateAuthority
    pairs: dict[str, KeyPair]  # identity -> its client certificate
    other: KeyPair  # worker-0 by another cluster's CA
    other_ca: bytes
    expired: KeyPair  # worker-0, expired yesterday
    server: KeyPair

    def mtls(self, name: str) -> ClientSecurity:
        return ClientSecurity(self.ca.cert_pem, self.pairs[name].cert, self.pairs[name].key)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    ca, other = CertificateAuthority(), CertificateAuthority("another cluster")
    roles = {"worker-0": AccessRole.WORKER, "worker-1": AccessRole.WORKER,
             "observer": AccessRole.OBSERVER, "admin": AccessRole.ADMIN}
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    return Cluster(ca, {n: ca.client(n, r) for n, r in roles.items()},
                   other.client("worker-0", AccessRole.WORKER), other.cert_pem,
                   ca.client("worker-0", AccessRole.WORKER, days=2, not_before=long_ago),
                   ca.server(["127.0.0.1", "localhost"]))


def _start(security: ServerSecurity) -> RunningServer:
    return start_server(ServerConfig(expected_workers=1, lease_s=0), "127.0.0.1", 0,
                        security=security)


@pytest.fixture(scope="module")
def mtls_server(cluster: Cluster) -> Iterator[RunningServer]:
    server = _start(ServerSecurity(cluster.server.cert, cluster.server.key,
                                   client_ca=cluster.ca.cert_pem))
    yield server
    server.stop(grace_s=0.5)


@pytest.fixture(scope="module")
def token_server(cluster: Cluster) -> Iterator[RunningServer]:
    roles = {"worker-0": AccessRole.WORKER, "worker-1": AccessRole.WORKER,
             "observer": AccessRole.OBSERVER, "admin": AccessRole.ADMIN}
    table = TokenTable({TOKENS[n]: Principal(n, r) for n, r in roles.items()})
    server = _start(ServerSecurity(cluster.server.cert, cluster.server.key, tokens=table))
    yield server
    server.stop(grace_s=0.5)


def _victim(server: RunningServer, security: ClientSecurity) -> ServerConnection:
    """worker-1, with a session and (once) the model registered."""
    victim = ServerConnection(server.address, timeout_s=5, retry_s=0, security=security)
    victim.handshake("worker-1")
    victim.register(LAYOUT, [raw(WEIGHTS)])
    return victim


def _call(server: RunningServer, security: ClientSecurity | None, rpc: str,
          session_id: str, worker_id: str = "worker-1") -> grpc.StatusCode:
    """One raw call of `rpc` (on `session_id` where it takes one); its status code."""
    connection = ServerConnection(server.address, timeout_s=5, retry_s=0, security=security)
    payload = raw(torch.ones(12))
    calls: dict[str, Callable[[], object]] = {
        "Handshake": lambda: connection._handshake(serde.RPCS["Handshake"].request_from_bytes(
            serde.RPCS["Handshake"].request_to_bytes(_handshake(worker_id))), timeout=5),
        "Register": lambda: connection._register(connection._messages(
            serde.encode_register_header(RegisterHeader(session_id, LAYOUT, True)),
            [raw(torch.zeros(12))]), timeout=5),
        "Push": lambda: connection._push(connection._messages(
            serde.encode_push_header(PushHeader(session_id, 0, 1, (SPEC,), False)),
            [payload]), timeout=5),
        "Pull": lambda: list(connection._pull(PullRequest(session_id=session_id,
                                                          min_version=0), timeout=5)),
        "Status": lambda: connection._status(True, timeout=5),
        "Heartbeat": lambda: connection._heartbeat(session_id, timeout=5),
        "JoinRound": lambda: connection._join_round(
            RoundRequest(session_id=session_id, round=0), timeout=1),
        "Leave": lambda: connection._leave(session_id, timeout=5),
    }
    try:
        calls[rpc]()
        return OK
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    finally:
        connection.close()


def _handshake(worker_id: str):  # type: ignore[no-untyped-def]
    from paramserver.types import HandshakeRequest

    return HandshakeRequest(worker_id=worker_id, role=Role.WORKER)


def _check_matrix(server: RunningServer, victim: ServerConnection,
                  cases: dict[str, tuple[ClientSecurity | None, grpc.StatusCode]]) -> None:
    before = server.core.store.state_hash()
    failures = []
    for case, (security, expected) in cases.items():
        for rpc in RPCS:
            code = _call(server, security, rpc, victim.session_id)
            if code != expected:
                failures.append(f"{rpc} with {case}: {code.name}, expected {expected.name}")
            assert server.core.store.state_hash() == before, f"{rpc} with {case} changed it"
    assert not failures, "\n".join(failures)
    assert victim.heartbeat() == server.core.store.version  # the victim's session lives on


def test_mtls_refuses_every_rpc_without_a_valid_certificate(cluster: Cluster,
                                                            mtls_server: RunningServer) -> None:
    victim = _victim(mtls_server, cluster.mtls("worker-1"))
    other, expired = cluster.other, cluster.expired
    # The server ends the TLS handshake: no call reaches the servicer (UNAVAILABLE).
    _check_matrix(mtls_server, victim, {
        "no credential (plaintext)": (None, UNAVAILABLE),
        "TLS without a client certificate": (ClientSecurity(cluster.ca.cert_pem),
                                             UNAVAILABLE),
        "a certificate of another cluster's CA": (
            ClientSecurity(cluster.ca.cert_pem, other.cert, other.key), UNAVAILABLE),
        "an expired certificate": (ClientSecurity(cluster.ca.cert_pem, expired.cert,
                                                  expired.key), UNAVAILABLE),
        "a client that trusts another CA": (
            ClientSecurity(cluster.other_ca, *_pair(cluster, "worker-0")), UNAVAILABLE),
    })


def _pair(cluster: Cluster, name: str) -> tuple[bytes, bytes]:
    return cluster.pairs[name].cert, cluster.pairs[name].key


def test_tokens_refuse_every_rpc_without_a_valid_token(cluster: Cluster,
                                                       token_server: RunningServer) -> None:
    victim = _victim(token_server, ClientSecurity(cluster.ca.cert_pem,
                                                  token=TOKENS["worker-1"]))
    _check_matrix(token_server, victim, {
        "no token": (ClientSecurity(cluster.ca.cert_pem), UNAUTHENTICATED),
        "a bad token": (ClientSecurity(cluster.ca.cert_pem, token="x" * 24), UNAUTHENTICATED),
        "a token one character off": (
            ClientSecurity(cluster.ca.cert_pem, token=TOKENS["worker-1"][:-1] + "g"),
            UNAUTHENTICATED),
        "no credential (plaintext)": (None, UNAVAILABLE),
    })


@pytest.mark.parametrize("kind", ["mtls", "tokens"])
def test_known_callers_cannot_act_as_another_worker(kind: str, cluster: Cluster,
                                                    mtls_server: RunningServer,
                                                    token_server: RunningServer) -> None:
    server = mtls_server if kind == "mtls" else token_server

    def as_(name: str) -> ClientSecurity:
        return (cluster.mtls(name) if kind == "mtls"
                else ClientSecurity(cluster.ca.cert_pem, token=TOKENS[name]))

    # Handshake is made as worker-1 (the victim's name), every other call on its session;
    # Status asks for the state hash, which is for admins only.
    victim = _victim(server, as_("worker-1"))
    _check_matrix(server, victim, {
        "another worker's credential (worker-0 as worker-1)": (as_("worker-0"),
                                                               PERMISSION_DENIED),
        "an observer's credential": (as_("observer"), PERMISSION_DENIED),
    })


@pytest.mark.parametrize("kind", ["mtls", "tokens"])
def test_each_role_can_do_its_own_work(kind: str, cluster: Cluster,
                                       mtls_server: RunningServer,
                                       token_server: RunningServer) -> None:
    server = mtls_server if kind == "mtls" else token_server

    def connect(name: str) -> ServerConnection:
        security = (cluster.mtls(name) if kind == "mtls"
                    else ClientSecurity(cluster.ca.cert_pem, token=TOKENS[name]))
        return ServerConnection(server.address, timeout_s=5, retry_s=0, security=security)

    worker = _victim(server, cluster.mtls("worker-1") if kind == "mtls" else
                     ClientSecurity(cluster.ca.cert_pem, token=TOKENS["worker-1"]))
    version = worker.status().version
    result = worker.push(version, [SPEC], [raw(torch.full((12,), 0.25))])
    assert result.applied
    observer = connect("observer")
    observer.handshake("observer", Role.OBSERVER)
    assert observer.status().version == version + 1
    with pytest.raises(Exception) as refused:
        observer.status(include_state_hash=True)
    assert getattr(refused.value, "code", None) == PERMISSION_DENIED
    assert "admin" in str(refused.value)
    admin = connect("admin")
    admin.handshake("any-observer-name", Role.OBSERVER)  # an admin may observe as anyone
    assert admin.status(include_state_hash=True).state_hash == server.core.store.state_hash()
    with pytest.raises(Exception) as as_worker:
        admin.handshake("admin")  # but never be a worker
    assert getattr(as_worker.value, "code", None) == PERMISSION_DENIED
    _rows_under_authentication(worker, observer)
    worker.leave()
    for connection in (worker, observer, admin):
        connection.close()


def _rows_under_authentication(worker: ServerConnection, observer: ServerConnection) -> None:
    """Row tables (issue #16) under authentication: a worker declares, pulls and pushes
    rows; an observer reads rows but cannot declare tables (every RPC was refused for
    everyone before the table RPCs had roles)."""
    plan = TablePlan(1, (TableSpec("emb", 100, 4),))
    with pytest.raises(Exception) as refused:
        observer.declare_tables(plan, 0)
    assert getattr(refused.value, "code", None) == PERMISSION_DENIED
    created, recorded = worker.declare_tables(plan, 0)
    assert created and recorded == plan
    received: list[int] = []
    ids = np.array([3, 7], dtype=np.int64)
    header = worker.pull_rows("emb", ids, 0, lambda *chunk: received.append(len(chunk[-1])))
    assert header.rows == 2 and sum(received) == 2 * 4 * 4
    assert observer.pull_rows("emb", ids, 0, lambda *chunk: None).rows == 2
    assert worker.push_rows("emb", header.version, ids, torch.ones(2, 4)).version >= 0


def test_a_credential_without_a_role_is_unauthenticated(cluster: Cluster,
                                                        mtls_server: RunningServer) -> None:
    from cryptography import x509  # a certificate from another tool: CN but no OU

    pair = cluster.ca._issue("stranger", None, [x509.DNSName("stranger")], 1,
                             x509.ExtendedKeyUsageOID.CLIENT_AUTH)
    code = _call(mtls_server, ClientSecurity(cluster.ca.cert_pem, pair.cert, pair.key),
                 "Status", "")
    assert code == UNAUTHENTICATED


def test_nobody_but_a_worker_can_register_the_first_model(cluster: Cluster) -> None:
    """The attack: register a model of one's own first and lock the real job out."""
    server = _start(ServerSecurity(cluster.server.cert, cluster.server.key,
                                   client_ca=cluster.ca.cert_pem))
    try:
        observer = ServerConnection(server.address, timeout_s=5, retry_s=0,
                                    security=cluster.mtls("observer"))
        observer.handshake("observer", Role.OBSERVER)
        assert _call(server, cluster.mtls("observer"), "Register",
                     observer.session_id) == PERMISSION_DENIED
        assert _call(server, None, "Register", observer.session_id) == UNAVAILABLE
        assert server.core.store.layout is None
        observer.close()
    finally:
        server.stop(grace_s=0.5)


def test_the_client_says_what_to_check_when_it_does_not_trust_the_server(
        cluster: Cluster, mtls_server: RunningServer) -> None:
    connection = ServerConnection(mtls_server.address, timeout_s=5, retry_s=5,
                                  security=ClientSecurity(cluster.other_ca,
                                                          *_pair(cluster, "worker-0")))
    with pytest.raises(Exception) as error:
        connection.status()
    assert getattr(error.value, "code", None) == UNAUTHENTICATED
    assert "--tls-ca" in str(error.value) and connection.retries == 0  # not retried
    connection.close()


# ---- without TLS: what still holds on loopback ----------------------------------------------


def test_status_never_hands_out_session_ids(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=2)
    worker = ServerConnection(server.address, timeout_s=5, retry_s=0)
    session = worker.handshake("worker-0")
    status = worker.status()
    assert [w.worker_id for w in status.workers] == ["worker-0"]
    assert all(w.session_id == "" for w in status.workers)
    assert session.session_id not in repr(status)
    worker.close()


def test_serving_beyond_loopback_needs_tls_and_authentication(cluster: Cluster,
                                                              caplog) -> None:  # type: ignore[no-untyped-def]
    tls_only = ServerSecurity(cluster.server.cert, cluster.server.key)
    for host, security in (("0.0.0.0", None), ("192.0.2.7", tls_only), ("::", None)):
        with pytest.raises(ValueError, match="--insecure"):
            check_binding(host, security)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(host, None)
    check_binding("0.0.0.0", ServerSecurity(cluster.server.cert, cluster.server.key,
                                            client_ca=cluster.ca.cert_pem))
    with caplog.at_level(logging.WARNING):
        check_binding("0.0.0.0", ServerSecurity(insecure=True))
    assert "WITHOUT TLS OR AUTHENTICATION" in caplog.text


def test_serve_refuses_a_public_address_without_insecure(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to serve 0.0.0.0" in capsys.readouterr().err


def test_status_table_prints_identities_safely() -> None:
    from paramserver.types import CodecSpec, Mode

    hostile = "\x1b[2J\x1b]0;pwned\x07" + "x" * (4 << 20)
    info = WorkerInfo(hostile, Role.WORKER, "", 1, 0.0, CodecSpec("none"), 1, 1)
    status = ServerStatus(layout=None, version=0, mode=Mode.SYNC, expected_workers=1,
                          optimizer="sgd", pending_pushes=0, server_version="x",
                          workers=(info,), evicted=(f"{hostile}@3",))
    text = format_status("127.0.0.1:1", status)
    assert "\x1b" not in text and "\x07" not in text
    assert max(len(line) for line in text.splitlines()) < 300


def test_certs_command_writes_a_cluster(tmp_path: Path) -> None:
    assert cli_main(["certs", "--out", str(tmp_path), "--servers", "10.0.0.5,ps.example",
                     "--workers", "2", "--tokens"]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"ca.crt", "server.crt", "server.key", "worker-0.crt", "worker-1.key",
            "observer.crt", "admin.crt", "tokens", "worker-0.token"} <= names
    assert (tmp_path / "worker-0.key").stat().st_mode & 0o077 == 0
    table = TokenTable.parse((tmp_path / "tokens").read_text())
    token = (tmp_path / "worker-1.token").read_text().strip()
    assert table.lookup(token) == Principal("worker-1", AccessRole.WORKER)
    from paramserver.security.certs import identity_of

    assert identity_of((tmp_path / "worker-1.crt").read_bytes()) == ("worker-1", "worker")


# ---- the local cluster and the examples under mutual TLS -------------------------------------


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paramserver.cli.main", *args], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_launch_tls_trains_with_a_certificate_per_worker(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = _cli("launch", "--tls", "--servers", "2", "--workers", "2", "--epochs", "2",
                  "--report", str(report), "--run-dir", str(tmp_path / "run"),
                  "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mutual TLS" in result.stdout
    summary = json.loads(report.read_text())
    assert summary["steps"] == 44 and summary["accuracy"] >= 0.85, summary
    assert {"ca.crt", "worker-0.crt", "worker-1.crt", "launcher.crt"} <= {
        p.name for p in (tmp_path / "run" / "tls").iterdir()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_federated_tls_runs_its_rounds(tmp_path: Path) -> None:
    report = tmp_path / "fed.json"
    result = _cli("federated", "--tls", "--simulate", "--clients", "3", "--rounds", "2",
                  "--report", str(report), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(report.read_text())["rounds"] == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_embedded_loop_example_runs_under_mutual_tls_from_the_environment(
        tmp_path: Path) -> None:
    """attach() takes its credential from PARAMSERVER_TLS_*: the example is unchanged."""
    from paramserver.security.certs import write_cluster

    files = write_cluster(tmp_path, ["127.0.0.1"], {"rank-0": AccessRole.WORKER,
                                                    "rank-1": AccessRole.WORKER})
    with LocalCluster(tmp_path / "run") as cluster:
        [(_, address)] = cluster.start_servers(1, [
            "--workers", "2", "--tls-cert", str(files.server_cert), "--tls-key",
            str(files.server_key), "--tls-client-ca", str(files.ca)])
        ranks = []
        for rank in range(2):
            cert, key = files.clients[f"rank-{rank}"]
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "PARAMSERVER_TLS_CA": str(files.ca), "PARAMSERVER_TLS_CERT": str(cert),
                   "PARAMSERVER_TLS_KEY": str(key)}
            ranks.append(subprocess.Popen(
                [sys.executable, str(REPO / "examples" / "embed_existing_loop.py"),
                 "--servers", address, "--epochs", "2"], cwd=REPO, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
        results = []
        for process in ranks:
            try:
                out, err = process.communicate(timeout=180)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            assert process.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["accuracy"] == results[1]["accuracy"] >= 0.85


def test_a_refused_certificate_is_explained_when_the_client_gives_up(
        cluster: Cluster, mtls_server: RunningServer) -> None:
    expired = cluster.expired
    connection = ServerConnection(mtls_server.address, timeout_s=5, retry_s=0,
                                  security=ClientSecurity(cluster.ca.cert_pem, expired.cert,
                                                          expired.key))
    with pytest.raises(Exception) as error:
        connection.status()
    assert getattr(error.value, "code", None) == UNAVAILABLE
    assert "--tls-cert" in str(error.value) and "expired" in str(error.value)
    connection.close()


def _example(script: str, *args: str) -> dict:  # type: ignore[type-arg]
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], cwd=REPO,
                            check=False, capture_output=True, text=True, timeout=240,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_source_document_examples_run_with_tls() -> None:
    parallel = _example("data_parallel.py", "--tls", "--workers", "2", "--epochs", "3")
    assert min(parallel["accuracy"]) >= 0.85, parallel
    federated = _example("federated_averaging.py", "--tls", "--clients", "2", "--rounds", "4")
    assert federated["round_loss"][-1] < federated["round_loss"][0], federated


def test_status_command_with_an_observer_certificate(cluster: Cluster, tmp_path: Path,
                                                     mtls_server: RunningServer) -> None:
    victim = _victim(mtls_server, cluster.mtls("worker-1"))
    paths = {}
    for name, data in (("ca", cluster.ca.cert_pem), ("crt", cluster.pairs["observer"].cert),
                       ("key", cluster.pairs["observer"].key)):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    result = _cli("status", "--servers", mtls_server.address, "--tls-ca", str(paths["ca"]),
                  "--tls-cert", str(paths["crt"]), "--tls-key", str(paths["key"]), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worker-1" in result.stdout and victim.session_id not in result.stdout
    plain = _cli("status", "--servers", mtls_server.address, "--timeout", "2", timeout=60)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stdout


def test_a_server_certificate_for_another_name_is_refused_with_the_fix(
        cluster: Cluster) -> None:
    elsewhere = cluster.ca.server(["10.9.9.9"])
    server = _start(ServerSecurity(elsewhere.cert, elsewhere.key,
                                   client_ca=cluster.ca.cert_pem))
    try:
        mine = cluster.mtls("observer")
        connection = ServerConnection(server.address, timeout_s=5, retry_s=5, security=mine)
        with pytest.raises(Exception) as error:
            connection.status()
        assert getattr(error.value, "code", None) == UNAUTHENTICATED
        assert "--tls-server-name" in str(error.value) and connection.retries == 0
        connection.close()
        renamed = dataclasses.replace(mine, server_name="10.9.9.9")
        assert ServerConnection(server.address, timeout_s=5, retry_s=0,
                                security=renamed).status().version == 0
    finally:
        server.stop(grace_s=0.5)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_the_shared_memory_data_plane_runs_under_mutual_tls(cluster: Cluster) -> None:
    """Allowed with TLS and authentication (docs/wire.md 5g): the handshake that accepts
    it, and every header, travel the authenticated channel; another worker's credential
    still cannot push on this session."""
    from workers import ParameterClient

    server = start_server(ServerConfig(expected_workers=1, lease_s=0, shm_data_plane=True),
                          "127.0.0.1", 0, security=ServerSecurity(
                              cluster.server.cert, cluster.server.key,
                              client_ca=cluster.ca.cert_pem))
    model = torch.nn.Linear(16, 4)
    try:
        with ParameterClient(server.address, "worker-0", timeout_s=5, retry_s=5,
                             security=cluster.mtls("worker-0"), step_call_bytes=0,
                             shm=True) as client:
            assert client.connections[0].shm is not None
            client.attach(model)
            for param in model.parameters():
                param.grad = torch.ones_like(param)
            client.step()
            assert client.version == 1
            session = client.connections[0].session_id
            assert _call(server, cluster.mtls("worker-1"), "Push", session,
                         "worker-0") == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(grace_s=0.5)
