"""Run one parameter server process: gRPC server, health service, signal handling."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from paramserver import serde
from paramserver.process_tuning import cap_arenas, tune_process
from paramserver.security.credentials import ServerSecurity
from paramserver.server.auth import Authenticator, check_binding
from paramserver.server.checkpoint import BeforeWrite
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.health_port import HealthPort
from paramserver.server.servicer import ParameterServerServicer, generic_handler
from paramserver.transport import server_credentials, server_options

if TYPE_CHECKING:
    from paramserver.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServerHooks:
    """Injection points for tests and benchmarks (fault injection); production uses none."""

    interceptors: Sequence[grpc.ServerInterceptor] = ()  # e.g. drop a reply after applying
    before_checkpoint_write: BeforeWrite | None = None  # e.g. die halfway through a save


@dataclass
class RunningServer:
    """A started server; `stop()` drains it and wakes every long poll."""

    server: grpc.Server
    core: ParameterServerCore
    health: health.HealthServicer
    port: int
    ticker: threading.Thread | None = None
    host: str = "127.0.0.1"
    metrics: ServerMetrics | None = None  # the /metrics endpoint (serve --metrics-port)
    health_port: HealthPort | None = None  # plaintext health only (serve --health-port)

    @property
    def address(self) -> str:
        """host:port to dial (a wildcard bind is dialled on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        return join_host_port(host, self.port)

    def stop(self, grace_s: float = 5.0) -> None:
        """Drain: health NOT_SERVING, long polls woken, in-flight pushes finish within the
        grace period, then a final checkpoint (when checkpointing is on)."""
        self.health.enter_graceful_shutdown()
        self.core.close()
        self.server.stop(grace_s).wait(grace_s + 1.0)
        if self.ticker is not None:
            self.ticker.join(timeout=2.0)
        if self.metrics is not None:
            self.metrics.close()
        if self.health_port is not None:  # closed last: probes saw NOT_SERVING meanwhile
            self.health_port.close()
        try:
            self.core.checkpoint()
        except Exception:  # a failed final checkpoint must not hide the shutdown
            log.exception("final checkpoint failed")


def join_host_port(host: str, port: int) -> str:
    """'host:port', an IPv6 literal in brackets ('[::1]:50051')."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def start_server(config: ServerConfig, host: str = "127.0.0.1", port: int = 0,
                 max_threads: int = 64, hooks: ServerHooks | None = None,
                 security: ServerSecurity | None = None, advertise_address: str = "",
                 metrics_port: int | None = None, health_port: int | None = None,
                 ) -> RunningServer:
    """Start serving on host:port (0 picks a free port; host may be any interface, an
    IPv6 literal, or 0.0.0.0 / :: for all) and return at once. `advertise_address` is the
    host:port workers should dial, reported in status (default: the bound address).
    `metrics_port`: serve Prometheus metrics on host:PORT (0: a free port; None: off).
    `health_port`: serve the health service alone, plaintext, on host:PORT (`HealthPort`).

    `security`: TLS and how callers are authenticated (None: plaintext, no authentication,
    which a non-loopback `host` refuses unless `security.insecure`; see `auth.py`)."""
    hooks = hooks or ServerHooks()
    if config.limits.max_long_polls >= max_threads:
        raise ValueError(f"--max-long-polls {config.limits.max_long_polls} must stay below "
                         f"the server's {max_threads} RPC threads, or waiting pulls could "
                         "take them all")
    check_binding(host, security)
    core = ParameterServerCore(config, before_checkpoint_write=hooks.before_checkpoint_write)
    metrics = None if metrics_port is None else _metrics_for(core)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads,
                                                    thread_name_prefix="ps-rpc"),
                         interceptors=_interceptors(security, hooks, metrics),
                         options=server_options(config.recv_window),
                         maximum_concurrent_rpcs=max_threads * 4)
    server.add_generic_rpc_handlers((generic_handler(ParameterServerServicer(core)),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = _bind(server, host, port, security)
    server.start()
    for service in ("", serde.SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d (%s, %d workers, %s)", serde.SERVICE_NAME, host, bound,
             config.mode.value, config.expected_workers, _describe(security))
    running = RunningServer(server, core, health_servicer, bound, host=host, metrics=metrics)
    if metrics is not None and metrics_port is not None:
        log.info("metrics on %s", join_host_port(host, metrics.serve(host.strip("[]"),
                                                                     metrics_port)))
    if health_port is not None:
        running.health_port = HealthPort(health_servicer, join_host_port(host, health_port))
        log.info("health (plaintext, health service only) on %s",
                 join_host_port(host, running.health_port.port))
    core.advertise_address = advertise_address or join_host_port(host, bound)
    running.ticker = threading.Thread(target=_tick, args=(running,), daemon=True,
                                      name="ps-lease")
    running.ticker.start()
    return running


def _interceptors(security: ServerSecurity | None, hooks: ServerHooks,
                  metrics: ServerMetrics | None) -> list[grpc.ServerInterceptor]:
    """Authentication first, so no other interceptor sees an unauthenticated call; then
    the injected hooks, then the metrics (which see what was answered)."""
    first = [Authenticator(security)] if security and security.authenticates else []
    return [*first, *hooks.interceptors, *([metrics.interceptor] if metrics else [])]


def _bind(server: grpc.Server, host: str, port: int, security: ServerSecurity | None) -> int:
    """The bound port: TLS when `security` has it, else plaintext; OSError if it fails."""
    address = join_host_port(host, port)
    bound = (server.add_secure_port(address, server_credentials(security))
             if security is not None and security.tls else server.add_insecure_port(address))
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    return bound


def _describe(security: ServerSecurity | None) -> str:
    if security is None or not security.tls:
        return "plaintext, no authentication"
    if security.client_ca is not None:
        return "mutual TLS"
    return "TLS, bearer tokens" if security.tokens is not None else "TLS, no authentication"


def _metrics_for(core: ParameterServerCore) -> ServerMetrics:
    from paramserver.server.metrics import ServerMetrics  # prometheus_client only if asked

    metrics = ServerMetrics()
    metrics.watch(core)
    return metrics


def _tick(running: RunningServer) -> None:
    """Evict workers whose lease ran out, a few times per lease, until the server stops."""
    period = min(0.5, running.core.config.lease_s / 4) if running.core.config.lease_s else 0.5
    while not running.core.store.closed:
        time.sleep(period)
        try:
            running.core.tick()
        except Exception:  # keep ticking: an eviction bug must not stop all evictions
            log.exception("lease check failed")


def serve(config: ServerConfig, host: str, port: int, port_file: Path | None = None,
          grace_s: float = 5.0, hooks: ServerHooks | None = None,
          security: ServerSecurity | None = None, advertise_address: str = "",
          metrics_port: int | None = None, health_port: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain within `grace_s` and return."""
    cap_arenas()  # before gRPC's threads make arenas of their own
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    running = start_server(config, host, port, hooks=hooks, security=security,
                           advertise_address=advertise_address, metrics_port=metrics_port,
                           health_port=health_port)
    tune_process()
    try:
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(running.port))
            tmp.replace(port_file)  # atomic: a reader never sees a half-written port
        print(f"paramserver listening on {join_host_port(host, running.port)}", flush=True)
        while not stop.wait(0.5):
            pass
        log.info("signal received, shutting down")
    finally:
        running.stop(grace_s)
