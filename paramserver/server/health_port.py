"""A plaintext port that answers only the standard gRPC health service (`serve
--health-port`), for probes that speak no TLS.

The kubelet's built-in `grpc:` probe cannot do TLS, and an exec probe would start a Python
process (our CLI imports torch: seconds of CPU) every few seconds in each server pod. This
port serves the same `HealthServicer` as the main one, so it says SERVING from bind and
NOT_SERVING once a drain begins; nothing else is registered on it (every other method is
UNIMPLEMENTED), so it carries no data and needs no credential, whatever the main port's
TLS and authentication.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc


class HealthPort:
    """`health` served plaintext on `address` ('host:port', port 0: a free one, see
    `.port`) until `close()`."""

    def __init__(self, servicer: health.HealthServicer, address: str) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                              thread_name_prefix="ps-health"))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._server)
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind the health port {address}")
        self._server.start()

    def close(self) -> None:
        self._server.stop(0).wait(2.0)
