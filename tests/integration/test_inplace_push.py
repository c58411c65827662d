"""A sync push broken after its first chunk was added in place (issue #14): the server
discards the step's aggregate, every worker of the step pushes it again by itself, and the
step is applied once, with every gradient (compared exactly to a reference)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.app import ServerHooks
from paramserver.types import Mode
from tests.conftest import ServerFactory
from tests.server_faults import BreakPushes
from workers import ParameterClient

LR, WORKERS = 0.5, 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(64, 32)  # 8 KiB of weights: 8 chunks of 1 KiB


def _gradient(worker: int, param: torch.Tensor) -> torch.Tensor:
    """Values whose sum over the workers, and its mean, are exact in float32."""
    return (0.25 * (worker + 1) + torch.arange(param.numel()) / 8).reshape(param.shape)


@pytest.mark.parametrize("waiting_in", ["streams", "step calls"])
def test_a_broken_push_makes_every_worker_push_the_step_again(
        server_factory: ServerFactory, waiting_in: str) -> None:
    """Workers 1 and 2 wait in their pulls (streams) or in their Step calls (the model fits
    one: the Step answer is the discard, and they push again on the stream); worker 3's
    push stream breaks after its first chunk."""
    broken = 3 if waiting_in == "streams" else 1  # BreakPushes counts Push streams only
    server = server_factory(hooks=ServerHooks(interceptors=[BreakPushes([broken])]),
                            mode=Mode.SYNC, expected_workers=WORKERS, chunk_bytes=1024,
                            optimizer=OptimizerConfig(lr=LR, momentum=0.9))
    models = [_model() for _ in range(WORKERS)]
    start = {n: p.detach().clone() for n, p in models[0].named_parameters()}
    step_call = [0 if waiting_in == "streams" or i == WORKERS - 1 else 1 << 20
                 for i in range(WORKERS)]  # the breaking push is always streamed
    clients = [ParameterClient(server.address, f"w{i}", timeout_s=10, retry_s=10,
                               step_call_bytes=step_call[i]) for i in range(WORKERS)]
    errors: list[BaseException] = []

    def step(worker: int) -> None:
        try:
            for param in models[worker].parameters():
                param.grad = _gradient(worker, param)
            clients[worker].step()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    try:
        for client, model in zip(clients, models):
            client.attach(model)
        threads = [threading.Thread(target=step, args=(w,)) for w in range(WORKERS)]
        for thread in threads[:2]:  # pushes 1 and 2: whole, then waiting in their pulls
            thread.start()
        deadline = time.monotonic() + 10
        while server.core.policy.report().pending_pushes < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        threads[2].start()  # push 3 breaks after its first chunk
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert server.core.store.version == 1
        assert [c._sent.repushes[0] for c in clients[:2]] == [1, 1]  # pushed again once
        assert clients[2].connections[0].retries >= 1  # the broken push, retried
        mean = {n: sum(_gradient(w, p) for w in range(WORKERS)) / WORKERS
                for n, p in start.items()}
        for model in models:
            for name, param in model.named_parameters():
                assert torch.equal(param.detach(), start[name] - LR * mean[name]), name
    finally:
        for client in clients:
            client.close()
