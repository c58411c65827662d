"""The receive window (issue #14) reaches the wire: a server started with --recv-window, and
a worker's connection made with a window, announce it as SETTINGS_INITIAL_WINDOW_SIZE in the
HTTP/2 SETTINGS frame that opens each connection (the window every peer's stream must keep
within), read here from raw sockets. Bad values are refused before anything starts."""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time

import pytest

from paramserver.cli.main import build_parser
from paramserver.cli.server_options import config_from_args, serve_args
from paramserver.errors import ParamServerError
from paramserver.server.app import start_server
from paramserver.server.config import ServerConfig
from paramserver.transport import FLOW_CONTROL_WINDOW, SERVER_WINDOW, parse_size
from workers.connection import ServerConnection

pytestmark = pytest.mark.timeout(30)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS, INITIAL_WINDOW_SIZE, ACK = 4, 4, 1


def _announced_window(sock: socket.socket, timeout_s: float = 5.0) -> int:
    """The INITIAL_WINDOW_SIZE of the first non-ACK SETTINGS frame the peer sends (65535,
    the protocol's default, when it names none)."""
    sock.settimeout(timeout_s)
    buffer = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
            payload, buffer = buffer[9:9 + length], buffer[9 + length:]
            if kind == SETTINGS and not flags & ACK:
                settings = {int.from_bytes(payload[i:i + 2], "big"):
                            int.from_bytes(payload[i + 2:i + 6], "big")
                            for i in range(0, len(payload), 6)}
                return settings.get(INITIAL_WINDOW_SIZE, 65535)
        data = sock.recv(65536)
        assert data, "the peer closed before sending SETTINGS"
        buffer += data
    raise AssertionError("no SETTINGS frame")


def _server_window(config: ServerConfig) -> int:
    running = start_server(config)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(PREFACE + EMPTY_SETTINGS)
            return _announced_window(sock)
    finally:
        running.stop(0)


def test_a_server_announces_the_window_it_was_started_with() -> None:
    assert _server_window(ServerConfig()) == SERVER_WINDOW == 2 << 20
    assert _server_window(ServerConfig(recv_window=8 << 20)) == 8 << 20


def _dial(connection: ServerConnection) -> None:
    with contextlib.suppress(ParamServerError):  # the posing socket never answers
        connection.wait_ready(3.0)


def _client_window(window: int = FLOW_CONTROL_WINDOW) -> int:
    """What a worker's connection announces to a listening socket posing as its server."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        connection = ServerConnection(f"127.0.0.1:{listener.getsockname()[1]}",
                                      timeout_s=2, retry_s=0, window=window)
        dialler = threading.Thread(target=_dial, args=(connection,), daemon=True)
        dialler.start()
        try:
            peer, _ = listener.accept()
            with peer:
                peer.settimeout(5)
                preface = b""
                while len(preface) < len(PREFACE):
                    preface += peer.recv(len(PREFACE) - len(preface))
                assert preface == PREFACE
                return _announced_window(peer)
        finally:
            connection.channel.close()
            dialler.join(timeout=5)


def test_a_worker_connection_announces_its_pull_window() -> None:
    assert _client_window() == 8 << 20
    assert _client_window(32 << 20) == 32 << 20


def _serve(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_the_flag_takes_sizes_and_survives_the_trip_through_serve_arguments() -> None:
    assert [parse_size(t) for t in ("2MiB", "512KiB", "8M", "5MB", "1.5MiB", "4194304")] == [
        2 << 20, 512 << 10, 8 << 20, 5_000_000, 3 << 19, 4 << 20]
    config = config_from_args(_serve("--recv-window", "8MiB"))
    assert config.recv_window == 8 << 20
    assert config_from_args(_serve(*serve_args(config))).recv_window == 8 << 20
    assert config_from_args(_serve()).recv_window == SERVER_WINDOW


@pytest.mark.parametrize("text, said", [
    ("lots", "use bytes or e.g. 512KiB"), ("-2MiB", "not a whole, non-negative"),
    ("1.5", "not a whole"), ("1KiB", "between 64KiB"), ("2GiB", "between 64KiB")])
def test_nonsense_and_out_of_bounds_windows_are_refused_naming_the_flag(
        text: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _serve(f"--recv-window={text}")
    error = capsys.readouterr().err
    assert "--recv-window" in error and said in error, error
    with pytest.raises(ValueError, match="--recv-window 1024 bytes: must be between"):
        ServerConfig(recv_window=1024)
