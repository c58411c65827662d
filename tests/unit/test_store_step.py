"""The store's optimizer step: the sum of pushes divided inside torch's fused SGD pass equals
torch.optim.SGD on the mean, including a parameter whose first gradient comes late."""

from __future__ import annotations

import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.server.store import ParameterStore
from paramserver.sharding import plan_partition
from tests.helpers import layout_of

CONFIG = OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=0.01)


def _store(values: dict[str, torch.Tensor]) -> ParameterStore:
    store = ParameterStore(CONFIG)
    layout = layout_of(values)
    store.create(layout, {n: v.clone().view(-1) for n, v in values.items()},
                 plan_partition(layout, 1), 0)
    return store


def test_a_sum_divided_in_the_fused_pass_is_sgd_on_the_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(5, 3, generator=generator), "b": torch.randn(7, generator=generator)}
    store = _store(start)
    reference = {n: torch.nn.Parameter(v.clone()) for n, v in start.items()}
    optimizer = torch.optim.SGD(reference.values(), lr=0.1, momentum=0.9, weight_decay=0.01,
                                foreach=False)  # the single-tensor path, not fused
    steps = [{"a": torch.randn(15, generator=generator)},  # b has no gradient yet
             {"a": torch.randn(15, generator=generator), "b": torch.randn(7, generator=generator)},
             {"a": torch.randn(15, generator=generator), "b": torch.randn(7, generator=generator)}]
    for step in steps:
        total = 3.0  # e.g. three workers' pushes summed
        store.apply({n: (g * total).clone() for n, g in step.items()}, divisor=total)
        for name, param in reference.items():
            grad = step.get(name)
            param.grad = None if grad is None else grad.view(param.shape).clone()
        optimizer.step()
    for name, param in reference.items():
        torch.testing.assert_close(store.params[name], param.detach(), rtol=1e-6, atol=1e-7)
    assert store.version == len(steps)


def test_the_optimizer_is_built_and_stepped_at_start_up() -> None:
    """Its first step's imports (torch._dynamo) happen when the store is made, not later."""
    import sys

    ParameterStore(CONFIG)
    assert "torch._dynamo" in sys.modules
