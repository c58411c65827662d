"""The floor: the same bytes moved with no parameter-server logic at all.

Two floors, each between separate processes on 127.0.0.1:
- raw TCP: the client sends the model's bytes, the server reads them all and sends them
  back (a push then a pull, with nothing in between);
- a bare gRPC stream: `benchmarks.bare_grpc`, which sinks and replays the very chunk
  messages our client and server put on the wire, with the same channel options (no
  decoding, no aggregation, no optimizer).
A round moves the model up and back down, the bytes of a W=1 sync step uncompressed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from benchmarks import bare_grpc, harness
from benchmarks.blob import blob_sizes
from benchmarks.measure import stat
from benchmarks.rounds import run_clients
from benchmarks.suite.pool import WorkerPool
from paramserver.transport import DEFAULT_CHUNK_BYTES

TIMEOUT_S = 120.0
BUFFER_BYTES = 4 << 20  # socket buffers; the kernel caps them at its own maximum


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    received = 0
    while received < len(view):
        got = sock.recv_into(view[received:])
        if got == 0:
            raise ConnectionError("peer closed mid-round")
        received += got


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)


def tcp_echo_server(ports: Any, nbytes: int, rounds: int) -> float:
    """Read `nbytes`, send them back, `rounds` times; returns the CPU seconds it used."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ports.put(listener.getsockname()[1])
        listener.settimeout(TIMEOUT_S)
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT_S)
        _tune(conn)
        buffer = memoryview(bytearray(nbytes))
        started = time.process_time()
        for _ in range(rounds):
            _recv_exactly(conn, buffer)
            conn.sendall(buffer)
        return time.process_time() - started


def tcp_client(ports: Any, nbytes: int, warmup: int, reps: int) -> dict[str, Any]:
    """Time `reps` rounds after `warmup`; returns round seconds and CPU seconds per round."""
    port = ports.get(timeout=TIMEOUT_S)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        _tune(sock)
        payload = memoryview(bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256))
        back = memoryview(bytearray(nbytes))
        rounds = []
        cpu = 0.0
        for index in range(warmup + reps):
            cpu_start, started = time.process_time(), time.perf_counter()
            sock.sendall(payload)
            _recv_exactly(sock, back)
            if index >= warmup:
                rounds.append(time.perf_counter() - started)
                cpu += time.process_time() - cpu_start
        return {"round_s": rounds, "cpu_s": cpu / reps}


def tcp_floor(pool: WorkerPool, model_mb: float, warmup: int, reps: int) -> dict[str, Any]:
    nbytes = 4 * sum(blob_sizes(model_mb))
    ports = pool.manager.Queue()
    server_cpu, client = pool.run(_dispatch, [
        ("server", ports, nbytes, warmup + reps), ("client", ports, nbytes, warmup, reps)],
        4 * TIMEOUT_S)
    rounds = stat(client["round_s"])
    server_cpu /= warmup + reps
    return {"system": "tcp", "model_mb": model_mb, "workers": 1, "bytes_per_round": 2 * nbytes,
            "round_s": rounds, "gbps": 2 * nbytes / rounds["median"] / 1e9,
            "server_cpu_s": server_cpu, "worker_cpu_s": client["cpu_s"],
            "busy_share": (server_cpu + client["cpu_s"])
            / (sum(client["round_s"]) / reps * (os.cpu_count() or 1))}


def _dispatch(role: str, *args: Any) -> Any:
    return tcp_echo_server(*args) if role == "server" else tcp_client(*args)


def grpc_floor(run_dir: Path, model_mb: float, workers: int, reps: int) -> dict[str, Any]:
    """Rounds of `workers` clients against the bare gRPC server (its own warm-up of
    `benchmarks.rounds.WARMUP` rounds)."""
    shapes: list[tuple[int, ...]] = [(n,) for n in blob_sizes(model_mb)]
    nbytes = 4 * sum(blob_sizes(model_mb))
    with harness.serving(bare_grpc.command(shapes), run_dir,
                         f"bare-{model_mb:g}mb-w{workers}") as bare:
        [result] = run_clients(
            "ceiling", bare_grpc.client, (bare.address, shapes, [DEFAULT_CHUNK_BYTES], reps),
            workers, [DEFAULT_CHUNK_BYTES], nbytes, bare.pid)
    timing = stat(result.round_s)
    return {"system": "grpc-stream", "model_mb": model_mb, "workers": workers,
            "bytes_per_round": result.bytes_per_round, "round_s": timing,
            "gbps": result.bytes_per_round / timing["median"] / 1e9,
            "server_cpu_s": result.server_cpu_s, "worker_cpu_s": result.client_cpu_s,
            "other_cpu_s": result.other_cpu_s, "busy_share": result.cpu_share()}
