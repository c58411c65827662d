"""Access rules without a network (issue #13): tokens, names, ownership, printing, binding."""

from __future__ import annotations

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.security.credentials import ClientSecurity, ServerSecurity, TokenTable
from paramserver.security.roles import (
    AccessRole,
    Principal,
    check_handshake,
    check_method,
    printable,
)
from paramserver.server.auth import is_loopback
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.types import Role
from tests.helpers import push_stream, register_stream

W0, W1 = Principal("worker-0", AccessRole.WORKER), Principal("worker-1", AccessRole.WORKER)
OBSERVER, ADMIN = Principal("obs", AccessRole.OBSERVER), Principal("root", AccessRole.ADMIN)
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _code(fn, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(ParamServerError) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_token_table_parses_roles_and_finds_tokens() -> None:
    table = TokenTable.parse("# comment\nworker w0 aaaaaaaaaaaaaaaaaaaa\n"
                             "admin root bbbbbbbbbbbbbbbbbbbb  # trailing\n")
    assert len(table) == 2
    assert table.lookup("aaaaaaaaaaaaaaaaaaaa") == Principal("w0", AccessRole.WORKER)
    assert table.lookup("bbbbbbbbbbbbbbbbbbbb") == Principal("root", AccessRole.ADMIN)
    assert table.lookup("aaaaaaaaaaaaaaaaaaab") is None and table.lookup("") is None
    for bad in ("worker w0", "boss w0 aaaaaaaaaaaaaaaaaaaa", "worker w0 short",
                "worker a cccccccccccccccccccc\nworker b cccccccccccccccccccc"):
        with pytest.raises(ValueError):
            TokenTable.parse(bad)


def test_roles_per_method() -> None:
    check_method(W0, "Push")
    for method in ("Push", "Register", "JoinRound"):
        assert _code(check_method, OBSERVER, method) == DENIED
        assert _code(check_method, ADMIN, method) == DENIED
    check_method(OBSERVER, "Pull")
    assert _code(check_method, W0, "NoSuchMethod") == DENIED


def test_every_rpc_of_the_service_has_its_roles() -> None:
    """A method missing from METHOD_ROLES is refused for everyone once authentication is
    on: the table RPCs and SecureAggregate were, until this test read the service."""
    from paramserver.proto import paramserver_pb2 as pb
    from paramserver.security.roles import METHOD_ROLES

    methods = set(pb.DESCRIPTOR.services_by_name["ParameterServer"].methods_by_name)
    assert methods - set(METHOD_ROLES) == set()
    for method in ("DeclareTables", "PushRows", "PullRows", "SecureAggregate", "Step"):
        check_method(W0, method)  # a worker trains with every one of them
    for method in ("DeclareTables", "PushRows", "SecureAggregate", "Step"):
        assert _code(check_method, OBSERVER, method) == DENIED
    check_method(OBSERVER, "PullRows")  # rows are read like parameters


def test_handshake_only_under_ones_own_name() -> None:
    check_handshake(None, "anyone", Role.WORKER)  # no authentication: no rules
    check_handshake(W0, "worker-0", Role.WORKER)
    check_handshake(W0, "worker-0", Role.OBSERVER)
    check_handshake(ADMIN, "evaluator", Role.OBSERVER)
    assert _code(check_handshake, W0, "worker-1", Role.WORKER) == DENIED
    assert _code(check_handshake, OBSERVER, "obs", Role.WORKER) == DENIED
    assert _code(check_handshake, OBSERVER, "other", Role.OBSERVER) == DENIED
    assert _code(check_handshake, ADMIN, "root", Role.WORKER) == DENIED


def test_the_core_binds_sessions_to_their_credential() -> None:
    core = ParameterServerCore(ServerConfig(expected_workers=2, lease_s=0))
    init = {"w": torch.zeros(4)}
    victim = core.handshake("worker-1", Role.WORKER, [], [], caller=W1).session_id
    core.register(iter(register_stream(victim, init)), caller=W1)
    before = core.store.state_hash()
    grads = {"w": torch.ones(4)}
    assert _code(core.push, iter(push_stream(victim, 0, grads)), caller=W0) == DENIED
    assert _code(core.register, iter(register_stream(victim, init)), caller=W0) == DENIED
    assert _code(core.pull, victim, 0, [], 0.1, caller=W0) == DENIED
    assert _code(core.heartbeat, victim, caller=W0) == DENIED
    assert _code(core.leave, victim, caller=W0) == DENIED
    assert _code(core.status, True, caller=W1) == DENIED
    assert core.status(True, caller=ADMIN).state_hash == before == core.store.state_hash()
    assert core.heartbeat(victim, caller=W1) == 0  # still the victim's
    core.leave(victim, caller=W1)
    assert "worker-1" not in core.members.live_workers()


def test_printable_strips_escapes_and_caps_length() -> None:
    assert printable("worker-0") == "worker-0"
    assert printable("\x1b[31mred\x07\u202e") == "?[31mred??"
    long = printable("x" * 10_000)
    assert len(long) == 64 and long.endswith("...")


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""):
        assert not is_loopback(host), host


def test_credentials_from_the_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ClientSecurity.from_env({}) is None
    (tmp_path / "ca").write_bytes(b"CA")
    (tmp_path / "t").write_text("\n  the-token  \n")
    security = ClientSecurity.from_env({"PARAMSERVER_TLS_CA": str(tmp_path / "ca"),
                                        "PARAMSERVER_TOKEN_FILE": str(tmp_path / "t")})
    assert security is not None and security.ca == b"CA" and security.token == "the-token"
    assert ClientSecurity.from_env({"PARAMSERVER_TOKEN": "abc"}) == ClientSecurity(token="abc")
    assert "abc" not in repr(ClientSecurity(token="abc"))
    with pytest.raises(ValueError):
        ClientSecurity(cert=b"c")
    with pytest.raises(ValueError, match="need TLS"):
        ServerSecurity(client_ca=b"ca")
    with pytest.raises(ValueError, match="not both"):
        ServerSecurity(b"c", b"k", b"ca", TokenTable({"t" * 16: W0}))
