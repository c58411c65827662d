"""Step options on the server (issue #18): clipping with torch's formula, the stated rate,
the loss scale divided out, inf/NaN steps skipped; bad options change nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from paramserver import serde
from paramserver.errors import ParamServerError
from paramserver.optimizer import OptimizerConfig
from paramserver.server.config import ServerConfig
from paramserver.server.core import ParameterServerCore
from paramserver.server.policies.step_rules import StepRules
from paramserver.types import Mode, PushHeader, Role, StepOptions
from tests.helpers import push_stream, register_stream

INIT = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
SGD = OptimizerConfig(lr=0.5, momentum=0.0)


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 100.0])
def test_clip_matches_torch_clip_grad_norm(max_norm: float) -> None:
    gen = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(40, generator=gen), "b": torch.randn(7, generator=gen) * 3}
    params = [torch.zeros_like(g, requires_grad=True) for g in grads.values()]
    for param, grad in zip(params, grads.values()):
        param.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    rules = StepRules()
    rules.add(StepOptions(max_grad_norm=max_norm))
    rules.add(StepOptions(max_grad_norm=max_norm * 2))  # the smallest bound wins
    rules.clip(grads)
    for param, grad in zip(params, grads.values()):
        assert torch.equal(param.grad, grad)


def test_the_smallest_stated_rate_wins() -> None:
    rules = StepRules()
    assert rules.lr_scale(0.5) == 1.0  # nothing stated: the server's --lr
    rules.add(StepOptions(lr=0.2))
    rules.add(StepOptions(lr=0.1))
    assert rules.lr_scale(0.5) == pytest.approx(0.2)


def _core(workers: int = 1) -> tuple[ParameterServerCore, list[str]]:
    core = ParameterServerCore(ServerConfig(mode=Mode.SYNC, expected_workers=workers,
                                            optimizer=SGD))
    sessions = [core.handshake(f"w{i}", Role.WORKER, [], []).session_id for i in range(workers)]
    core.register(iter(register_stream(sessions[0], INIT)))
    return core, sessions


def test_loss_scale_is_divided_out_over_all_parts_and_the_rate_applied() -> None:
    core, (s,) = _core()
    core.push(iter(push_stream(s, 0, {"w": torch.full((2, 3), 1024.0)}, more_parts=True)))
    core.push(iter(push_stream(s, 0, {"b": torch.full((3,), 2048.0)},
                               options=StepOptions(lr=0.1, grad_scale=1024.0))))
    np.testing.assert_allclose(core.store.params["w"].numpy(), INIT["w"].numpy() - 0.1)
    np.testing.assert_allclose(core.store.params["b"].numpy(), -0.2 * np.ones(3))


def test_a_step_any_worker_found_inf_in_is_skipped_for_everyone() -> None:
    core, (s1, s2) = _core(workers=2)
    before = {n: p.clone() for n, p in core.store.params.items()}
    core.push(iter(push_stream(s1, 0, {"w": torch.ones(2, 3)})))
    result = core.push(iter(push_stream(s2, 0, {"w": torch.full((2, 3), float("inf"))},
                                        options=StepOptions(found_inf=True))))
    assert result.applied and core.store.version == 1
    for name, value in before.items():
        assert torch.equal(core.store.params[name], value), name


@pytest.mark.parametrize("options", [StepOptions(lr=-1.0), StepOptions(lr=float("nan")),
                                     StepOptions(max_grad_norm=0.0),
                                     StepOptions(grad_scale=float("inf"))])
def test_bad_step_options_are_refused_and_change_nothing(options: StepOptions) -> None:
    core, (s,) = _core()
    before = core.store.state_hash()
    with pytest.raises(ParamServerError) as info:
        core.push(iter(push_stream(s, 0, {"w": torch.ones(2, 3)}, options=options)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert core.store.state_hash() == before and core.policy.report().pending_pushes == 0


@pytest.mark.parametrize("options", [None, StepOptions(lr=0.0), StepOptions(
    lr=0.25, max_grad_norm=1.5, grad_scale=65536.0, found_inf=True)])
def test_step_options_survive_the_wire(options: StepOptions | None) -> None:
    header = PushHeader("s", 3, 1, (), False, 1, 2, options=options)
    decoded = serde.decode_push_request(serde.encode_push_header(header))
    assert decoded == header
