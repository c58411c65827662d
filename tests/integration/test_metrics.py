"""Prometheus metrics during a real (in-process) run: the server's and a worker's
endpoints are scraped before, during and after training, and the values move as they
should (steps, RPC counts and bytes, live workers, an eviction, checkpoints)."""

from __future__ import annotations

import math
import time
import urllib.request
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

import workers
from paramserver.types import Role
from tests.conftest import ServerFactory
from workers.connection import ServerConnection

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of http://127.0.0.1:PORT/metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_a_run(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory(metrics_port=0, expected_workers=1, lease_s=0.5,
                            checkpoint_dir=tmp_path, checkpoint_every=2)
    assert server.metrics is not None
    port = server.metrics.port
    before = scrape(port)
    assert value(before, "paramserver_steps_total") == 0
    assert math.isnan(value(before, "paramserver_checkpoint_age_seconds"))

    # A worker that handshakes and then falls silent is evicted once its lease lapses.
    silent = ServerConnection(server.address, timeout_s=5)
    silent.handshake("silent", Role.WORKER)
    assert value(scrape(port), "paramserver_live_workers") == 1
    deadline = time.monotonic() + 20
    while value(scrape(port), "paramserver_evictions_total") < 1:
        assert time.monotonic() < deadline, "no eviction"
        time.sleep(0.2)
    silent.close()

    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    with workers.attach(model, server.address, overlap=False, metrics_port=0) as ps:
        assert ps.metrics is not None
        for _ in range(6):
            model(torch.randn(8, 64)).sum().backward()
            ps.step()
        during, mine = scrape(port), scrape(ps.metrics.port)
        assert value(during, "paramserver_live_workers") == 1

    assert value(during, "paramserver_steps_total") == 6
    assert value(during, "paramserver_model_version") == 6
    # A model this small steps in one Step call (a push and its pull; issue #14).
    assert value(during, "paramserver_rpc_calls_total", method="Step", code="OK") == 6
    assert value(during, "paramserver_rpc_received_bytes_total", method="Step") > 6 * 64 * 10 * 4
    assert value(during, "paramserver_rpc_sent_bytes_total", method="Step") > 6 * 64 * 10 * 4
    assert value(during, "paramserver_rpc_duration_seconds_count", method="Step") == 6
    assert value(during, "paramserver_model_bytes") == (64 * 10 + 10) * 4
    assert value(during, "paramserver_checkpoint_duration_seconds") > 0
    assert 0 <= value(during, "paramserver_checkpoint_age_seconds") < 60
    assert value(during, "paramserver_held_part_bytes") == 0  # no push half-done
    pushes = [v for (name, labels), v in during.items()
              if name == "paramserver_worker_pushes_total" and ("codec", "none") in labels]
    assert pushes == [6]

    assert value(mine, "paramserver_worker_step_seconds_count", codec="none") == 6
    pushed = value(mine, "paramserver_worker_push_bytes_total", server=server.address,
                   codec="none")
    assert pushed == sum(value(during, "paramserver_rpc_received_bytes_total", method=m)
                         for m in ("Push", "Register", "Step"))  # both sides count the same bytes
    assert value(mine, "paramserver_worker_compression_ratio") > 0.9
    assert value(mine, "paramserver_worker_version", server=server.address) == 6
