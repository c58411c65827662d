"""Compressed pulls (issue #14): with a delta pull codec every worker holds exactly the
server's replica of what its codec's workers hold, the replica stays within the stated
bound of the parameters, and a worker holding another version gets the replica whole."""

from __future__ import annotations

import threading

import torch

from paramserver.types import CodecSpec
from tests.conftest import ServerFactory
from workers import ParameterClient

PUSH = CodecSpec.parse("topk:ratio=0.05")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))


def _client(address: str, name: str, pull: str) -> ParameterClient:
    return ParameterClient(address, name, push_codecs=[PUSH],
                           pull_codecs=[CodecSpec.parse(pull)], timeout_s=20)


def _steps(clients: list[ParameterClient], models: list[torch.nn.Module], count: int) -> None:
    """`count` sync steps of every client with random gradients, one thread per client."""
    def run(index: int) -> None:
        generator = torch.Generator().manual_seed(index)
        for _ in range(count):
            for param in models[index].parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            clients[index].step()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def _attach_together(clients: list[ParameterClient], models: list[torch.nn.Module]) -> None:
    """Every client attaches its model at once (the sync job waits for all of them)."""
    attachers = [threading.Thread(target=c.attach, args=(m,)) for c, m in zip(clients, models)]
    for thread in attachers:
        thread.start()
    for thread in attachers:
        thread.join(30)


def test_topk_pulls_keep_workers_on_the_replica_within_the_bound(
        server_factory: ServerFactory) -> None:
    server = server_factory(expected_workers=2)
    models = [_model(), _model()]
    clients = [_client(server.address, f"w{i}", "topk:ratio=0.1") for i in range(2)]
    try:
        _attach_together(clients, models)
        _steps(clients, models, 12)
        [stream] = server.core.pull_streams.streams().values()
        assert stream.version == server.core.store.version == 12
        for model in models:  # exactly the replica: both sides added the same values
            for name, param in model.named_parameters():
                assert torch.equal(param.detach().reshape(-1), stream.replica[name])
        residual = stream.residual(server.core.store)
        assert max(float(r.abs().max()) for r in residual.values()) > 0  # it compressed
        # The bound: no element is further from the server than the smallest magnitude the
        # last delta sent for its tensor (every larger difference was sent).
        last = stream.last_sent_magnitudes()
        for name, diff in residual.items():
            assert float(diff.abs().max()) <= last[name] + 1e-6, name
        dense = sum(p.numel() * 4 for p in models[0].parameters())
        assert clients[0].bytes_pulled < 0.5 * dense * 13  # 13 pulls, well under whole ones
    finally:
        for client in clients:
            client.close()


def test_a_worker_that_joins_later_gets_the_replica_whole(server_factory: ServerFactory) -> None:
    server = server_factory(expected_workers=1)
    first_model, late_model = _model(), _model()
    first = _client(server.address, "w0", "qsgd:bits=8")
    try:
        first.attach(first_model)
        _steps([first], [first_model], 5)
        with _client(server.address, "late", "qsgd:bits=8") as late:
            late.attach(late_model)  # its first pull: the replica, whole
            [stream] = server.core.pull_streams.streams().values()
            for name, param in late_model.named_parameters():
                assert torch.equal(param.detach().reshape(-1), stream.replica[name])
                assert torch.equal(param.detach(), dict(first_model.named_parameters())[name])
    finally:
        first.close()


def test_qsgd_pushes_and_pulls_made_piece_by_piece_keep_workers_on_the_replica(
        server_factory: ServerFactory) -> None:
    """Both directions of qsgd streamed (codecs/streaming.py): pushes encoded while sent and
    decoded while they arrive, one pull delta made as the first pull reads it; with a
    tensor of several pieces, every worker still holds exactly the server's replica."""
    server = server_factory(expected_workers=2)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 3))

    models = [model(), model()]
    clients = [ParameterClient(server.address, f"w{i}", timeout_s=20,
                               push_codecs=[CodecSpec.parse("qsgd:bits=8")],
                               pull_codecs=[CodecSpec.parse("qsgd:bits=8")]) for i in range(2)]
    try:
        _attach_together(clients, models)
        _steps(clients, models, 4)
        [stream] = server.core.pull_streams.streams().values()
        assert stream.version == server.core.store.version == 4
        for model_ in models:
            for name, param in model_.named_parameters():
                assert torch.equal(param.detach().reshape(-1), stream.replica[name]), name
        residual = stream.residual(server.core.store)["0.weight"]
        assert 0 < float(residual.abs().max()) < 0.05  # quantised, and close
    finally:
        for client in clients:
            client.close()
