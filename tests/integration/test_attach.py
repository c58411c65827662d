"""`workers.attach`: the few lines that make a plain PyTorch loop a parameter-server worker.

Checks what the wrapper promises: each gradient is pushed exactly once per step (in parts
while backward runs), parameters without gradients are left alone, the model holds the
servers' parameters after every step, zero_grad / no_sync / the optimizer drop-in behave,
and a dead server surfaces as an exception rather than a hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from paramserver.errors import FailedPrecondition, ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.types import Mode, Role
from tests.conftest import ServerFactory
from workers import ParameterClient, attach
from workers.attach import AttachedModel

SGD = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
SMALL_BUCKET_MB = 0.05  # 52 KiB: the 256x256 layers get a bucket each, so parts happen


class Net(nn.Module):
    """Three layers used in forward and one (`unused`) never touched by it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                  nn.Linear(256, 10))
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _batches(count: int, size: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 64, generator=gen), torch.randint(0, 10, (size,), generator=gen))
            for _ in range(count)]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _reference(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    model = Net()
    optimizer = SGD.build(model.parameters())
    for batch in batches:
        optimizer.zero_grad()
        _loss(model, batch).backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_params(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def _record_pushes(attached: AttachedModel) -> list[tuple[list[str], bool]]:
    """Log (names pushed, more_parts) per push: every push, streamed or in a Step call
    (issue #14), gathers its gradients in the client's `_step_push`."""
    log: list[tuple[list[str], bool]] = []
    original = attached.client._step_push

    def gather(num_samples, names, more_parts, options, gradients):  # type: ignore[no-untyped-def]
        params = attached.client._params
        if gradients is not None:
            sent = list(gradients)
        else:
            sent = [n for n in (params if names is None else names)
                    if params[n].grad is not None]
        log.append((sent, more_parts))
        return original(num_samples, names, more_parts, options, gradients)

    attached.client._step_push = gather  # type: ignore[method-assign]
    return log


@pytest.fixture
def sync_server(server_factory: ServerFactory) -> Callable[..., str]:
    def start(workers: int = 1, mode: Mode = Mode.SYNC) -> str:
        return server_factory(mode=mode, expected_workers=workers, optimizer=SGD).address
    return start


def test_every_gradient_pushed_once_per_step_and_model_matches_reference(
        sync_server: Callable[..., str]) -> None:
    batches = _batches(4)
    model = Net()
    with attach(model, sync_server(), worker_id="w0", bucket_mb=SMALL_BUCKET_MB) as ps:
        pushes = _record_pushes(ps)
        optimizer = ps.optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        for step, batch in enumerate(batches):
            optimizer.zero_grad()
            _loss(model, batch).backward()
            optimizer.step()
            parts = [names for names, more in pushes if more]
            closing = [names for names, more in pushes if not more]
            assert len(closing) == 1, pushes
            if step:  # buckets are rebuilt in arrival order after the first step
                assert len(parts) >= 2, pushes  # overlap really happened
            sent = [n for names in parts + closing for n in names]
            used = [n for n, p in model.named_parameters() if not n.startswith("unused")]
            assert sorted(sent) == sorted(used), f"step {step}: {sent}"  # each exactly once
            assert ps.version == step + 1
            pushes.clear()
        assert ps.parts_pushed >= 2 * (len(batches) - 1)
    _assert_params(model, _reference(batches))


def test_parameters_without_gradients_stay_as_the_server_holds_them(
        sync_server: Callable[..., str]) -> None:
    model = Net()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with attach(model, sync_server(), worker_id="w0", bucket_mb=SMALL_BUCKET_MB) as ps:
        for batch in _batches(2):
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
    assert torch.equal(model.unused.weight, start["unused.weight"])  # no grad: no update,
    assert not torch.equal(model.body[0].weight, start["body.0.weight"])  # not even decay


def test_model_holds_the_servers_parameters_after_each_step(
        sync_server: Callable[..., str]) -> None:
    address = sync_server()
    model = Net()
    with attach(model, address, worker_id="w0", bucket_mb=SMALL_BUCKET_MB) as ps, \
            ParameterClient(address, "observer", role=Role.OBSERVER) as observer:
        mirror = Net(seed=5)
        observer.attach(mirror)
        for batch in _batches(3):
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
            observer.pull(ps.version)
            for (name, mine), theirs in zip(model.named_parameters(), mirror.parameters()):
                assert torch.equal(mine, theirs), name


def test_two_overlapping_workers_match_one_process_on_the_joined_batches(
        sync_server: Callable[..., str]) -> None:
    address = sync_server(workers=2)
    per_worker = [_batches(3, seed=10), _batches(3, seed=11)]
    joined = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*per_worker)]
    models = [Net(), Net()]
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            with attach(models[rank], address, worker_id=f"w{rank}",
                        bucket_mb=SMALL_BUCKET_MB) as ps:
                for batch in per_worker[rank]:
                    models[rank].zero_grad()
                    _loss(models[rank], batch).backward()
                    ps.step()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    expected = _reference(joined)
    _assert_params(models[0], expected)
    _assert_params(models[1], expected)


def test_no_sync_accumulates_and_a_second_backward_without_step_is_refused(
        sync_server: Callable[..., str]) -> None:
    a, b = _batches(2)
    joined_grads = Net()
    (_loss(joined_grads, a) + _loss(joined_grads, b)).backward()
    model = Net()
    with attach(model, sync_server(), worker_id="w0", bucket_mb=SMALL_BUCKET_MB) as ps:
        pushes = _record_pushes(ps)
        with ps.no_sync():
            _loss(model, a).backward()
        assert not pushes  # nothing left the worker inside no_sync
        _loss(model, b).backward()
        for (name, mine), theirs in zip(model.named_parameters(), joined_grads.parameters()):
            if theirs.grad is not None:
                torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
        ps.step()
        assert ps.version == 1
        model.zero_grad()
        _loss(model, a).backward()
        _loss(model, b).backward()  # the buckets of the first backward were already sent
        with pytest.raises(RuntimeError, match="second gradient"):
            ps.step()


def test_step_without_backward_is_a_clear_error(sync_server: Callable[..., str]) -> None:
    with attach(Net(), sync_server(), worker_id="w0") as ps, \
            pytest.raises(ParamServerError, match="backward"):
        ps.step()


def test_mode_mismatch_is_refused(sync_server: Callable[..., str]) -> None:
    with pytest.raises(FailedPrecondition, match="async"):
        attach(Net(), sync_server(), worker_id="w0", mode="async")


def test_async_server_with_overlap_applies_each_step_once(
        sync_server: Callable[..., str]) -> None:
    model = Net()
    with attach(model, sync_server(mode=Mode.ASYNC), worker_id="w0", mode="async",
                bucket_mb=SMALL_BUCKET_MB) as ps:
        for batch in _batches(3):
            model.zero_grad()
            _loss(model, batch).backward()
            ps.step()
        assert ps.version == 3  # parts did not bump the version on their own


def test_a_dead_server_raises_in_the_loop_instead_of_hanging(
        server_factory: ServerFactory) -> None:
    server = server_factory(mode=Mode.SYNC, expected_workers=1, optimizer=SGD)
    model = Net()
    ps = attach(model, server.address, worker_id="w0", timeout_s=3.0, retry_s=2.0,
                bucket_mb=SMALL_BUCKET_MB)
    try:
        _loss(model, _batches(1)[0]).backward()
        ps.step()
        server.stop(grace_s=0.1)
        model.zero_grad()
        _loss(model, _batches(1)[0]).backward()
        started = time.monotonic()
        with pytest.raises(ParamServerError):
            ps.step()
        assert time.monotonic() - started < 10.0
    finally:
        ps.close()


def test_close_joins_the_heartbeat_thread(server_factory: ServerFactory) -> None:
    server = server_factory(expected_workers=1, optimizer=SGD)  # leases on: workers heartbeat
    before = set(threading.enumerate())
    client = ParameterClient(server.address, "w0", timeout_s=10)
    [heartbeat] = [t for t in set(threading.enumerate()) - before if t.name == "ps-heartbeat"]
    client.close()
    assert not heartbeat.is_alive()
