"""Build decoded request streams for driving ParameterServerCore without a network."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc
import pytest
import torch

from paramserver.errors import ParamServerError
from paramserver.transport import chunk_ranges
from paramserver.types import ModelLayout, PushHeader, RegisterHeader, StepOptions, TensorSpec
from paramserver.wire import Chunk


def raw(tensor: torch.Tensor) -> memoryview:
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().data


def chunks(tensors: list[torch.Tensor], chunk_bytes: int = 64) -> list[Chunk]:
    out = []
    for index, tensor in enumerate(tensors):
        data = raw(tensor)
        out += [Chunk(index, a, data[a:b]) for a, b in chunk_ranges(data.nbytes, chunk_bytes)]
    return out


def layout_of(tensors: Mapping[str, torch.Tensor]) -> ModelLayout:
    return ModelLayout(tuple(TensorSpec.of(n, t) for n, t in tensors.items()))


def register_stream(session_id: str, tensors: Mapping[str, torch.Tensor],
                    with_values: bool = True) -> list[object]:
    header = RegisterHeader(session_id, layout_of(tensors), with_values)
    return [header, *(chunks(list(tensors.values())) if with_values else [])]


def push_stream(session_id: str, step: int, grads: Mapping[str, torch.Tensor],
                num_samples: int = 1, more_parts: bool = False,
                momentum_applied: bool = False,
                options: StepOptions | None = None) -> list[object]:
    specs = tuple(TensorSpec.of(n, g) for n, g in grads.items())
    return [PushHeader(session_id, step, num_samples, specs, more_parts,
                       momentum_applied=momentum_applied, options=options),
            *chunks(list(grads.values()))]


def refused(code: grpc.StatusCode, fn: Callable[..., object], *args: object) -> str:
    """Call `fn(*args)`, which must raise a ParamServerError of `code`; its message."""
    with pytest.raises(ParamServerError) as info:
        fn(*args)
    assert info.value.code == code, info.value.message
    return info.value.message
