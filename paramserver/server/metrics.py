"""Prometheus metrics of one server (`serve --metrics-port`).

Two small parts, so the hot path barely changes: `CoreCollector` reads the core's status
(and the few figures status does not carry) at scrape time, and `RpcMetrics`, a gRPC
server interceptor, counts each RPC by method and status code, times it, and counts the
bytes its messages had on the wire (by wrapping serde's (de)serializers). Names follow the
Prometheus conventions: `_total` counters, `_seconds` and `_bytes` units.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paramserver.server.core import ParameterServerCore
from paramserver.types import Mode, Role

# Latency buckets from 1 ms (a small push on loopback) to 2 min (a long poll, a 1 GB pull).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0, 60.0, 120.0)
FEDERATED_MODES = (Mode.FEDERATED, Mode.FEDBUFF)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)  # exposed as NAME_total


class CoreCollector(Collector):
    """The server's state as metrics, read from `core` at every scrape."""

    def __init__(self, core: ParameterServerCore) -> None:
        self.core = core

    def collect(self) -> Iterable[Metric]:
        status, internals = self.core.status(), self.core.internals()
        workers = [w for w in status.workers if w.role is Role.WORKER]
        yield _gauge("paramserver_model_version", "version of the parameters", status.version)
        yield _counter("paramserver_steps", "updates applied (sync/SSP: steps; async: pushes; "
                       "federated: rounds)", status.version)
        yield _gauge("paramserver_model_bytes", "bytes of parameters on this shard",
                     status.layout.nbytes if status.layout else 0)
        yield _gauge("paramserver_live_workers", "workers holding a lease", len(workers))
        yield _gauge("paramserver_expected_workers", "sync: the workers that form the job",
                     status.expected_workers)
        yield _counter("paramserver_evictions", "workers evicted for a lapsed lease",
                       len(status.evicted))
        yield _counter("paramserver_rejoins", "workers that handshook again after an "
                       "eviction or a restart", len(status.rejoins))
        yield _gauge("paramserver_staleness_max_lead", "SSP: the largest lead of a worker "
                     "over the slowest, ever (steps)", status.max_lead)
        yield _gauge("paramserver_pending_pushes", "sync: pushes in the step being "
                     "assembled", status.pending_pushes)
        yield _gauge("paramserver_held_part_bytes", "bytes of push parts waiting for their "
                     "closing part", internals.held_part_bytes)
        yield from self._checkpoint(internals.checkpoint_s, internals.checkpoint_at)
        yield from self._per_worker(workers)
        if status.mode in FEDERATED_MODES:
            yield _counter("paramserver_federated_rounds", "federated rounds closed",
                           status.version)
            yield _counter("paramserver_federated_dropouts", "sampled clients that did not "
                           "report", len(status.dropouts))
            yield _counter("paramserver_federated_skipped_rounds", "rounds closed with too "
                           "few reports", len(status.skipped_rounds))

    @staticmethod
    def _checkpoint(duration_s: float, at: float) -> Iterator[Metric]:
        yield _gauge("paramserver_checkpoint_duration_seconds", "time the newest checkpoint "
                     "took to write", duration_s)
        yield _gauge("paramserver_checkpoint_age_seconds", "seconds since the newest "
                     "checkpoint (NaN: none yet)", time.time() - at if at else math.nan)

    @staticmethod
    def _per_worker(workers: list[Any]) -> Iterator[Metric]:
        pushes = CounterMetricFamily("paramserver_worker_pushes", "pushes applied per worker "
                                     "and its push codec", labels=["worker", "codec"])
        seen = GaugeMetricFamily("paramserver_worker_seen_seconds", "seconds since the "
                                 "worker was last heard from", labels=["worker"])
        for worker in workers:
            pushes.add_metric([worker.worker_id, str(worker.push_codec)], worker.pushes)
            seen.add_metric([worker.worker_id], worker.seconds_since_seen)
        yield pushes
        yield seen


def _counting(convert: Callable[[Any], Any] | None, on_bytes: Callable[[int], None],
              ) -> Callable[[Any], Any]:
    """`convert` (bytes -> record, or record -> bytes; None: identity) that counts bytes."""

    def counted(value: Any) -> Any:
        if isinstance(value, bytes):
            on_bytes(len(value))
        out = convert(value) if convert is not None else value
        if isinstance(out, bytes):
            on_bytes(len(out))
        return out

    return counted


class RpcMetrics(grpc.ServerInterceptor):
    """Per-RPC calls by status code, latency and bytes in and out, by method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter("paramserver_rpc_calls", "RPCs handled, by method and status "
                             "code", ["method", "code"], registry=registry)
        self.seconds = Histogram("paramserver_rpc_duration_seconds", "time from an RPC's "
                                 "start to its last reply message", ["method"],
                                 buckets=RPC_BUCKETS, registry=registry)
        self.received = Counter("paramserver_rpc_received_bytes", "request message bytes",
                                ["method"], registry=registry)
        self.sent = Counter("paramserver_rpc_sent_bytes", "reply message bytes", ["method"],
                            registry=registry)

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary",
                                "stream_stream") if getattr(handler, k) is not None)
        return handler._replace(
            request_deserializer=_counting(handler.request_deserializer,
                                           self.received.labels(method).inc),
            response_serializer=_counting(handler.response_serializer,
                                          self.sent.labels(method).inc),
            **{kind: self._timed(method, getattr(handler, kind), kind.endswith("stream"))})

    def _timed(self, method: str, behaviour: Callable[..., Any], streams: bool,
               ) -> Callable[..., Any]:
        def done(started: float, context: Any, failed: bool) -> None:
            self.seconds.labels(method).observe(time.perf_counter() - started)
            code = context.code() if hasattr(context, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else (
                "UNKNOWN" if failed else "OK")
            self.calls.labels(method, name).inc()

        def unary(request: Any, context: Any) -> Any:
            started, failed = time.perf_counter(), True
            try:
                reply = behaviour(request, context)
                failed = False
                return reply
            finally:
                done(started, context, failed)

        def stream(request: Any, context: Any) -> Iterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                yield from behaviour(request, context)
                failed = False
            finally:
                done(started, context, failed)

        return stream if streams else unary


class ServerMetrics:
    """The registry, interceptor and HTTP endpoint of one server; `close()` stops it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.interceptor = RpcMetrics(self.registry)
        self._http: Any = None
        self.port = 0

    def watch(self, core: ParameterServerCore) -> None:
        self.registry.register(CoreCollector(core))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port; the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
