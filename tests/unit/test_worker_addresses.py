"""A worker's server addresses are checked at once, and a draining server's CANCELLED is
retried like UNAVAILABLE (issue #18)."""

from __future__ import annotations

import grpc
import pytest

from paramserver.errors import InvalidArgument, ParamServerError
from workers.addresses import parse_servers
from workers.connection import ServerConnection


@pytest.mark.parametrize("servers", ["127.0.0.1:50051", "localhost:1", "[::1]:65535",
                                     "ps-0.cluster.local:50051, ps-1:50052"])
def test_host_port_addresses_are_accepted(servers: str) -> None:
    assert parse_servers(servers) == [a.strip() for a in servers.split(",")]


@pytest.mark.parametrize("servers", ["localhost", "127.0.0.1:abc", "http://127.0.0.1:50051",
                                     "127.0.0.1:99999", "127.0.0.1:0", ":50051", "a:1,b", ""])
def test_malformed_addresses_are_refused_naming_the_form(servers: str) -> None:
    with pytest.raises(InvalidArgument, match="host:port"):
        parse_servers(servers)


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} from a test"


@pytest.mark.parametrize(("code", "retried"), [
    (grpc.StatusCode.CANCELLED, True),  # a draining server (SIGTERM) cancels calls in flight
    (grpc.StatusCode.UNAVAILABLE, True),
    (grpc.StatusCode.INVALID_ARGUMENT, False),
])
def test_cancelled_is_retried_like_unavailable(code: grpc.StatusCode, retried: bool) -> None:
    connection = ServerConnection("127.0.0.1:1", retry_s=5.0)
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise _Failed(code)
        return "answered"

    try:
        if retried:
            assert connection._retrying(attempt) == "answered"
            assert connection.retries == 1
        else:
            with pytest.raises(ParamServerError):
                connection._retrying(attempt)
            assert len(calls) == 1
    finally:
        connection.close()
