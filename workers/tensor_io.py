"""Byte views of torch tensors for the wire, with pinned host staging for CUDA tensors."""

from __future__ import annotations

import numpy as np
import torch


def host_bytes(tensor: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a CPU tensor, without copying when it is contiguous.
    Through numpy's own dtype where it has one: two torch calls instead of four, per
    tensor and step (issue #14)."""
    flat = tensor.detach() if tensor.requires_grad else tensor
    if not flat.is_contiguous():
        flat = flat.contiguous()
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16
        return flat.reshape(-1).view(torch.uint8).numpy().data
    return flat.numpy().data.cast("B")


class HostMirror:
    """A CPU copy of one device tensor, pinned when CUDA is in use, reused every step.

    For CPU tensors the mirror *is* the tensor: reads and writes go straight to its storage.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.device = like.device
        self._values: tuple[tuple[object, ...], np.ndarray] | None = None  # writable_values
        if like.device.type == "cpu":
            self.host = None
        else:
            self.host = torch.empty(like.numel(), dtype=like.dtype,
                                    pin_memory=torch.cuda.is_available())

    def bytes_of(self, tensor: torch.Tensor) -> memoryview:
        """Bytes of `tensor` on the host (copies device -> pinned host first when needed)."""
        if self.host is None:
            return host_bytes(tensor)
        self.host.copy_(tensor.detach().reshape(-1), non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host_bytes(self.host)

    def writable_values(self, tensor: torch.Tensor) -> np.ndarray:
        """A writable flat numpy view (of the tensor's dtype, or its raw bytes when numpy has
        no such dtype) that `commit` moves into `tensor`. Made once while the tensor keeps
        its storage, dtype and shape (the view held here keeps that storage alive, so no
        other tensor can take its address meanwhile): the pull of every step needs it."""
        target = tensor if self.host is None else self.host
        if not target.is_contiguous():
            raise ValueError("parameters must be contiguous to be pulled in place")
        key = (target.data_ptr(), target.dtype, target.shape)
        if self._values is not None and self._values[0] == key:
            return self._values[1]
        flat = target.data.view(-1)
        values = flat.view(torch.uint8).numpy() if flat.dtype == torch.bfloat16 else flat.numpy()
        self._values = (key, values)
        return values

    def commit(self, tensor: torch.Tensor) -> None:
        if self.host is not None:
            tensor.data.view(-1).copy_(self.host, non_blocking=True)

