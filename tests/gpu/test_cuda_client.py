"""CUDA path of the worker client: device -> pinned host -> wire, and back in place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramserver.optimizer import OptimizerConfig
from paramserver.types import CodecSpec
from workers import ParameterClient

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_model_pushes_and_pulls_in_place(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=OptimizerConfig(lr=1.0, momentum=0.0))
    model = nn.Linear(256, 128).cuda()
    weight_ref = model.weight
    with ParameterClient(server.address, "gpu0") as client:
        client.attach(model)
        before = model.weight.detach().cpu().clone()
        model.zero_grad()
        model(torch.ones(4, 256, device="cuda")).sum().backward()
        grad = model.weight.grad.detach().cpu().clone()
        client.step(num_samples=4)
    assert model.weight is weight_ref and model.weight.is_cuda  # updated in place, on device
    torch.testing.assert_close(model.weight.detach().cpu(), before - grad)
    torch.testing.assert_close(server.core.store.params["weight"], before - grad)


def test_cuda_model_pulls_fp16_through_the_codec_in_place(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(expected_workers=1, optimizer=OptimizerConfig(lr=1.0, momentum=0.0))
    model = nn.Linear(256, 128).cuda()
    weight_ref = model.weight
    with ParameterClient(server.address, "gpu0", pull_codecs=[CodecSpec("fp16")]) as client:
        assert str(client.session.pull_codec) == "fp16"
        client.attach(model)
        stored = server.core.store.params["weight"]
        assert model.weight is weight_ref and model.weight.is_cuda
        torch.testing.assert_close(model.weight.detach().cpu(), stored.half().float(),
                                   atol=0, rtol=0)  # the fp16 rounding of the server's values
