"""Prometheus metrics of one worker (`attach(..., metrics_port=)`).

A collector reads the client's counters at scrape time (bytes pushed and pulled per server
and push codec, compression ratio, version, rejoins, dropped pushes, retries); the step
latency histogram is the only thing observed on the training path (one clock read).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.parameter_client import ParameterClient

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ClientCollector(Collector):
    """The client's figures as metrics, per server (shard) and push codec."""

    def __init__(self, client: ParameterClient, steps: Any) -> None:
        self.client = client
        self.steps = steps

    def collect(self) -> Iterable[Metric]:
        client, labels = self.client, ["server", "codec"]
        pushed = CounterMetricFamily("paramserver_worker_push_bytes", "bytes pushed on the "
                                     "wire, by server and push codec", labels=labels)
        pulled = CounterMetricFamily("paramserver_worker_pull_bytes", "bytes pulled on the "
                                     "wire, by server and push codec", labels=labels)
        version = GaugeMetricFamily("paramserver_worker_version", "version of the "
                                    "parameters in the model, by server", labels=["server"])
        for shard, connection in enumerate(client.connections):
            key = [connection.address, str(client.push_codecs[shard].spec)]
            pushed.add_metric(key, connection.bytes_pushed)
            pulled.add_metric(key, connection.bytes_pulled)
            version.add_metric([connection.address], client.versions[shard])
        yield from (pushed, pulled, version)
        yield GaugeMetricFamily("paramserver_worker_compression_ratio", "uncompressed "
                                "gradient bytes / gradient bytes sent",
                                value=client.compression_ratio)
        yield CounterMetricFamily("paramserver_worker_rejoins", "shards re-entered after "
                                  "an eviction or a server restart", value=client.rejoins)
        yield CounterMetricFamily("paramserver_worker_aborted_pushes", "pushes dropped: "
                                  "their step closed, or too stale",
                                  value=client.aborted_pushes)
        yield CounterMetricFamily("paramserver_worker_retries", "calls tried again",
                                  value=sum(c.retries for c in client.connections))


class WorkerMetrics:
    """A worker's registry and /metrics endpoint; `observe_step` times the loop's steps."""

    def __init__(self, client: ParameterClient, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        codec = str(client.push_codecs[0].spec) if client.push_codecs else "none"
        self._steps = Histogram("paramserver_worker_step_seconds", "a training step's push "
                                "and pull (what step() waits for), by push codec", ["codec"],
                                buckets=STEP_BUCKETS, registry=self.registry).labels(codec)
        self.registry.register(ClientCollector(client, self._steps))
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)

    def observe_step(self, seconds: float) -> None:
        self._steps.observe(seconds)

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
