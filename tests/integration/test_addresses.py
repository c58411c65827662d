"""Addresses across hosts, on this machine's loopback: a server bound to an IPv6 literal
is reached at `[::1]:port`, one bound to 127.0.0.1 by the DNS name `localhost`, and the
address a server advertises is what `status` reports."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

import workers
from paramserver.server.app import join_host_port
from tests.conftest import ServerFactory
from workers.connection import ServerConnection


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _one_step(address: str) -> int:
    """Attach a tiny model at `address`, push one gradient; the version it lands on."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with workers.attach(model, address, overlap=False, timeout_s=10, retry_s=5) as ps:
        model(torch.ones(3, 4)).sum().backward()
        ps.step()
        return ps.version


def test_join_host_port_brackets_ipv6_literals() -> None:
    assert join_host_port("10.77.0.1", 50051) == "10.77.0.1:50051"
    assert join_host_port("::1", 5) == "[::1]:5"
    assert join_host_port("[::1]", 5) == "[::1]:5"


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_a_server_on_an_ipv6_literal_trains_a_step(server_factory: ServerFactory) -> None:
    server = server_factory(host="::1")
    assert server.address == f"[::1]:{server.port}"
    assert _one_step(server.address) == 1
    connection = ServerConnection(server.address, timeout_s=5)
    try:
        assert connection.status().advertise_address == f"[::1]:{server.port}"
    finally:
        connection.close()


def test_workers_reach_a_server_by_dns_name(server_factory: ServerFactory) -> None:
    server = server_factory()
    assert _one_step(f"localhost:{server.port}") == 1


def test_status_reports_the_advertised_address(server_factory: ServerFactory) -> None:
    server = server_factory(advertise_address="ps-0.ps:50051")
    connection = ServerConnection(server.address, timeout_s=5)
    try:
        assert connection.status().advertise_address == "ps-0.ps:50051"
    finally:
        connection.close()
