"""The one place that owns gRPC channel and server options and the chunk size.

Figures behind the defaults (grpcio 1.85, 2 cores, loopback; see benchmarks/RESULTS.md):
a stream of ~1 MiB messages is the sweet spot; 64 KiB pieces reach a third of it; single
messages of 32 MiB or more collapse because each fresh buffer page-faults. Turning off BDP
probing with a fixed flow-control window gave about +19%. The window is 8 MiB (issue #14):
at 64 MiB every bulk stream could park up to 64 MiB in gRPC's buffers on each side, which
was +1.3x the model bytes of server memory per 100 MB worker; 8 MiB costs no measurable CPU
per round (server CPU per 100 MB round 146 vs 140 ms at W=1, 308 vs 304 at W=2) and 4 MiB
saved no more memory. A server receives with a 2 MiB window (`SERVER_WINDOW`, issue #14):
what the push streams park in gRPC's buffers stays resident in the heap beside the
parameters, momentum and aggregate; at the server's peak (100 MB model) that heap was
31 / 60 / 102 MiB above the tensors at W=1 / 2 / 4 with 8 MiB windows, 13 / 26 / 44 MiB
with 2 MiB, at no cost in server CPU per round (benchmarks/RESULTS.md). The price is on
long links: one push stream moves at most a window per round trip, 2 MiB / 40 ms = 52 MB/s
(8 MiB: 210 MB/s); measured with 40 ms added on a 1 Gbit/s test-bed link, one 64 MB push
moved 48 MB/s with 2 MiB, 79 with 4 MiB, 104 with 8 or 16 MiB (115 with no delay). Pulls
keep the workers' 8 MiB. `serve --recv-window` raises the server's (a window of at least
link rate x round trip fills the link: 1 Gbit/s x 40 ms = 5 MB), and
`ParameterClient(recv_window=...)` / `attach(recv_window=...)` a worker's.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from paramserver.errors import ParamServerError, Unauthenticated
from paramserver.security.credentials import ClientSecurity, ServerSecurity

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB of tensor payload per TensorChunk
MAX_MESSAGE_BYTES = 64 << 20  # headers may carry large layouts; chunks stay ~1 MiB
# Unary requests (Handshake, Status, Heartbeat, Pull, JoinRound, Leave) are small: the
# largest, a Handshake at every limit of ServerLimits, is under 8 KiB. gRPC bounds messages
# per server, not per method, so the servicer's deserializers refuse bigger unary requests
# (RESOURCE_EXHAUSTED) before parsing them.
MAX_UNARY_REQUEST_BYTES = 64 << 10
FLOW_CONTROL_WINDOW = 8 << 20
SERVER_WINDOW = 2 << 20  # what a server receives: bulk pushes, held W streams at once
# Window bounds we accept: HTTP/2 allows 0 to 2^31-1 (RFC 9113 6.9.2), but below 64 KiB (the
# protocol's default) a 1 MiB chunk needs many round trips, and 1 GiB is beyond any link's
# rate x round trip (100 Gbit/s x 80 ms) while every stream may park that much.
MIN_WINDOW = 64 << 10
MAX_WINDOW = 1 << 30
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9}

_COMMON_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", FLOW_CONTROL_WINDOW),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def parse_size(text: str) -> int:
    """'2MiB', '512KiB', '8M' (binary), '5MB' (decimal) or '2097152' -> bytes."""
    value = text.strip().lower().replace(" ", "")
    number = value.rstrip("kmgib")
    unit = value[len(number):]
    try:
        scale, amount = _SIZE_UNITS[unit], float(number)
    except (KeyError, ValueError):
        raise ValueError(f"size {text!r}: use bytes or e.g. 512KiB, 2MiB, 8MiB, 5MB") from None
    if not (math.isfinite(amount) and amount >= 0) or amount * scale != int(amount * scale):
        raise ValueError(f"size {text!r} is not a whole, non-negative number of bytes")
    return int(amount * scale)


def check_window(nbytes: int, what: str = "flow-control window") -> int:
    """`nbytes` if it is a window gRPC can use (MIN_WINDOW..MAX_WINDOW), else ValueError."""
    if not MIN_WINDOW <= nbytes <= MAX_WINDOW:
        raise ValueError(f"{what} {nbytes} bytes: must be between 64KiB ({MIN_WINDOW}) and "
                         f"1GiB ({MAX_WINDOW}); fill a link with rate x round trip, e.g. "
                         "1 Gbit/s x 40 ms = 5MB")
    return nbytes


def _with_window(window: int) -> list[tuple[str, Any]]:
    return [(key, check_window(window) if key == "grpc.http2.lookahead_bytes" else value)
            for key, value in _COMMON_OPTIONS]


def channel_options(window: int = FLOW_CONTROL_WINDOW) -> list[tuple[str, Any]]:
    """Options for every client channel; `window`: what it receives (pulls) per stream."""
    return _with_window(window)


def server_options(window: int = SERVER_WINDOW) -> list[tuple[str, Any]]:
    """Options for every server; `window`: what it receives (pushes) per stream."""
    return [
        *_with_window(window),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.so_reuseport", 0),
    ]


def insecure_channel(address: str, window: int = FLOW_CONTROL_WINDOW) -> grpc.Channel:
    """A channel to `address` ("host:port") with the project's options."""
    return grpc.insecure_channel(address, options=channel_options(window))


def open_channel(address: str, security: ClientSecurity | None = None,
                 window: int = FLOW_CONTROL_WINDOW) -> grpc.Channel:
    """A channel to `address`: plaintext without `security`, else TLS (mutual TLS when it
    holds a certificate) with its bearer token on every call. `window`: the receive window
    of each stream (what a pull may have in flight)."""
    if security is None or not security.tls:
        return insecure_channel(address, window)
    credentials = grpc.ssl_channel_credentials(security.ca, security.key, security.cert)
    if security.token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(security.token))
    options = channel_options(window)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return grpc.secure_channel(address, credentials, options=options)


def server_credentials(security: ServerSecurity) -> grpc.ServerCredentials:
    """TLS with the server's pair; a client CA makes it mutual (a client without a
    certificate that CA signed fails the TLS handshake)."""
    assert security.cert is not None and security.key is not None
    return grpc.ssl_server_credentials(
        [(security.key, security.cert)], root_certificates=security.client_ca,
        require_client_auth=security.client_ca is not None)


# What gRPC's details say when TLS itself refused the peer (not a socket error, which a
# restarting server also causes and which is worth retrying).
_TLS_REFUSALS = ("SSL_ERROR_SSL", "security handshaker", "Verification Check failed")


def tls_refusal(error: grpc.RpcError, address: str) -> ParamServerError | None:
    """UNAUTHENTICATED with what to check, when `error` is this client refusing the TLS
    handshake (the server's certificate is not from --tls-ca or not for this name, a
    plaintext server, an unusable own certificate): retrying cannot help, so callers raise
    this instead of retrying UNAVAILABLE. None for other errors (a server refusing our
    certificate just closes the connection, which looks like any network failure)."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else "") or ""
    if code != grpc.StatusCode.UNAVAILABLE or not any(m in details for m in _TLS_REFUSALS):
        return None
    return Unauthenticated(
        f"the TLS handshake with {address} failed ({details.strip()[:300]}): check that "
        "--tls-ca is the CA that signed the server's certificate, that the certificate "
        "names the host you dial (else --tls-server-name), that your --tls-cert/--tls-key "
        "belong together, and that both sides use TLS")


def chunk_ranges(nbytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[int, int]]:
    """Split [0, nbytes) into consecutive (start, end) ranges of at most chunk_bytes.

    A zero-byte payload yields no ranges: an empty tensor needs no chunk.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return [(start, min(start + chunk_bytes, nbytes)) for start in range(0, nbytes, chunk_bytes)]


def parse_bandwidth(text: str) -> float | None:
    """'100mbit', '1gbit', '10Gbit/s' or 'unlimited' -> bytes per second (None: no cap)."""
    value = text.strip().lower().removesuffix("/s").removesuffix("ps")
    if value in ("", "0", "none", "unlimited", "inf"):
        return None
    for suffix, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * scale / 8
    raise ValueError(f"bandwidth {text!r}: use e.g. 100mbit, 1gbit or unlimited")


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_REQUEST = health_pb2.HealthCheckRequest(service="")


def wait_connected(channel: grpc.Channel, address: str, timeout_s: float) -> None:
    """Block until `channel` reaches the server at `address` (it may still be starting),
    by a health check that waits for the connection. Not channel_ready_future: that one
    leaves grpc's connectivity poller running, which holds close() for up to 0.2 s (a
    per-client cost when simulated clients come and go every round, issue #17)."""
    check = channel.unary_unary(HEALTH_CHECK, request_serializer=_HEALTH_REQUEST.SerializeToString,
                                response_deserializer=lambda b: b)
    try:
        check(_HEALTH_REQUEST, timeout=max(timeout_s, 0.001), wait_for_ready=True)
    except grpc.RpcError as error:  # any answer means connected; these mean not
        if error.code() in (grpc.StatusCode.UNAVAILABLE,  # type: ignore[attr-defined]
                            grpc.StatusCode.DEADLINE_EXCEEDED):
            raise ParamServerError(f"server {address} not reachable within {timeout_s}s",
                                   grpc.StatusCode.UNAVAILABLE) from None
