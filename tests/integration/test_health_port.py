"""`serve --health-port`: the health service alone, plaintext, next to a mutual-TLS port,
for the kubelet's gRPC probe (deploy/k8s/ps-statefulset.yaml)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paramserver import serde
from paramserver.security.certs import CertificateAuthority
from paramserver.security.credentials import ServerSecurity
from paramserver.server.app import RunningServer, start_server
from paramserver.server.config import ServerConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server() -> Iterator[RunningServer]:
    ca = CertificateAuthority()
    pair = ca.server(["127.0.0.1", "localhost"])
    running = start_server(ServerConfig(expected_workers=1, lease_s=0), "127.0.0.1", 0,
                           security=ServerSecurity(pair.cert, pair.key,
                                                   client_ca=ca.cert_pem),
                           health_port=0)
    yield running
    running.stop(grace_s=0.5)


def _check(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


def test_the_health_port_answers_plaintext_next_to_mutual_tls(server: RunningServer) -> None:
    assert server.health_port is not None
    port = server.health_port.port
    assert port != server.port
    assert _check(port, "") == SERVING
    assert _check(port, serde.SERVICE_NAME) == SERVING
    with pytest.raises(grpc.RpcError) as refused:  # the main port takes no plaintext
        _check(server.port, "")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_health_port_serves_nothing_else(server: RunningServer) -> None:
    assert server.health_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port.port}") as channel:
        status = channel.unary_unary(f"/{serde.SERVICE_NAME}/Status")
        with pytest.raises(grpc.RpcError) as refused:
            status(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_draining_server_says_not_serving_on_the_health_port(server: RunningServer) -> None:
    assert server.health_port is not None
    server.health.enter_graceful_shutdown()  # what stop() does first
    assert _check(server.health_port.port, "") == NOT_SERVING
