"""The parameters, their optimizer and the version: the state a server exists to keep."""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch

from paramserver.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from paramserver.optimizer import OptimizerConfig, fused_sgd_step
from paramserver.server.limits import LongPoll
from paramserver.sharding import PartitionPlan
from paramserver.types import BUFFER_PREFIX, ModelLayout, TensorSpec


def state_digest(version: int, params: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex over the version and each parameter's name and raw bytes, in mapping order.

    Tests use it to check that a refused request changed nothing, and that a restored shard
    holds exactly the state that was saved.
    """
    digest = hashlib.sha256(str(version).encode())
    for name, param in params.items():
        digest.update(name.encode())
        flat = param.detach().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class ParameterStore:
    """Parameters in torch CPU tensors, updated by one optimizer, versioned by update count.

    `lock` (a Condition) guards `params`, the optimizer, `version`, `layout` and `plan`;
    waiters on it are woken whenever the version advances or the store closes. `layout` is
    this shard's part of the model; `plan` says how the whole model is split.
    """

    def __init__(self, optimizer: OptimizerConfig) -> None:
        self.lock = threading.Condition()
        self.registering = threading.Lock()  # held while one registration's values arrive
        self.layout: ModelLayout | None = None
        self.plan: PartitionPlan | None = None
        self.shard_index = 0
        self._specs: dict[str, TensorSpec] = {}
        self.params: dict[str, torch.Tensor] = {}
        self._bytes: dict[str, memoryview] = {}  # byte_view's, per parameter tensor
        self.version = 0
        self._optimizer_config = optimizer
        optimizer.warm_up()  # its imports belong to start-up, not to the first step
        self._optimizer: torch.optim.Optimizer | None = None
        self._closed = False
        self._hash_lock = threading.Lock()  # one state hash at a time
        self._hashed: tuple[int, str] | None = None  # (version, its state hash)

    def create(self, layout: ModelLayout, values: Mapping[str, torch.Tensor],
               plan: PartitionPlan, shard_index: int) -> bool:
        """Install the model once; False when the same model was already installed.

        Raises FailedPrecondition if a different layout or plan is registered.
        """
        with self.lock:
            if self.layout is not None:
                self.require_same_model(layout, plan, shard_index)
                return False
            self.plan, self.shard_index = plan, shard_index
            self._specs = layout.by_name()
            self.params = {s.name: values[s.name].view(s.shape) for s in layout.tensors}
            self._bytes = {}
            self._optimizer = self._optimizer_config.build(self.params.values())
            self.layout = layout
            self.version = 0
            self._hashed = None
            self.lock.notify_all()
            return True

    def require_same_model(self, layout: ModelLayout, plan: PartitionPlan,
                           shard_index: int) -> None:
        assert self.layout is not None and self.plan is not None
        reason = self.layout.describe_difference(layout)
        if reason:
            raise FailedPrecondition(
                f"a different model is already registered on this server: {reason}")
        if shard_index != self.shard_index:
            raise FailedPrecondition(
                f"this server holds shard {self.shard_index} of the plan, not shard "
                f"{shard_index}: list the servers in the order the job was started with")
        if plan != self.plan:
            raise FailedPrecondition(
                f"partition plan differs from the one recorded at registration "
                f"({self.plan.num_shards} shards, {len(self.plan.slices)} slices; offered "
                f"{plan.num_shards} shards, {len(plan.slices)} slices): use the recorded plan "
                "from the handshake")

    def require_layout(self) -> ModelLayout:
        if self.layout is None:
            raise FailedPrecondition("no model is registered yet; call Register first")
        return self.layout

    def spec(self, name: str) -> TensorSpec:
        """The stored spec of tensor `name` (the model must be registered)."""
        return self._specs[name]

    def apply(self, grads: Mapping[str, torch.Tensor], lr_scale: float = 1.0,
              plain: Mapping[str, torch.Tensor] | None = None, divisor: float = 1.0) -> int:
        """One optimizer step with `grads` / `divisor` (flat, by name) at `lr_scale` times
        the learning rate, plus a plain SGD step with `plain` / `divisor` (updates that
        already carry the momentum); returns the new version. `grads` may be divided in
        place (fused SGD divides inside its own pass instead: `fused_sgd_step`).

        Tensors without a gradient are skipped, as torch.optim skips params whose grad is None.
        """
        with self.lock:
            assert self._optimizer is not None
            self._check_grads(grads)
            pairs = [(self.params[name], _shaped(grad, self.params[name]))
                     for name, grad in grads.items()]
            if not fused_sgd_step(self._optimizer, pairs, lr_scale, divisor):
                self._step(grads, lr_scale, divisor)
            rate = self._optimizer.param_groups[0]["lr"]
            for name, update in (plain or {}).items():
                param = self.params[name]
                param.add_(update.view(param.shape), alpha=-rate * lr_scale / divisor)
            self.version += 1
            self.lock.notify_all()
            return self.version

    def _step(self, grads: Mapping[str, torch.Tensor], lr_scale: float, divisor: float) -> None:
        """optimizer.step() on grads / divisor at lr_scale times its rates (the optimizers
        that `fused_sgd_step` does not take); the gradients are cleared after."""
        assert self._optimizer is not None
        if divisor != 1.0:
            for values in grads.values():
                values.div_(divisor)
        for name, param in self.params.items():
            grad = grads.get(name)
            param.grad = None if grad is None else grad.view(param.shape)
        groups = self._optimizer.param_groups
        rates = [group["lr"] for group in groups]
        if lr_scale != 1.0:
            for group, rate in zip(groups, rates):
                group["lr"] = rate * lr_scale
        try:
            self._optimizer.step()
        finally:
            for group, rate in zip(groups, rates):
                group["lr"] = rate
            for param in self.params.values():
                param.grad = None

    def overwrite(self, values: Mapping[str, torch.Tensor]) -> None:
        """Replace the values of buffers (names under BUFFER_PREFIX), which no optimizer
        step ever changes; the version does not move."""
        with self.lock:
            for name, value in values.items():
                if not name.startswith(BUFFER_PREFIX):
                    raise FailedPrecondition(f"{name!r} is a parameter, not a buffer")
                self.params[name].view(-1).copy_(value.view(-1))

    def _check_grads(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Refuse, before any parameter moves, what the optimizer would fail on halfway."""
        for name, grad in grads.items():
            param = self.params.get(name)
            if param is None:
                raise InvalidArgument(f"no parameter named {name!r}")
            if not param.dtype.is_floating_point:
                raise InvalidArgument(f"tensor {name!r} is {param.dtype}: only floating-point "
                                      "parameters take gradients")
            if grad.numel() != param.numel() or grad.dtype != param.dtype:
                raise InvalidArgument(f"gradient of {name!r} is {grad.dtype}[{grad.numel()}], "
                                      f"the parameter {param.dtype}[{param.numel()}]")

    def snapshot(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
        """A consistent copy of version, parameters and optimizer state (for checkpoints)."""
        with self.lock:
            assert self._optimizer is not None
            params = {name: param.detach().clone() for name, param in self.params.items()}
            return self.version, params, copy.deepcopy(self._optimizer.state_dict())

    def restore(self, layout: ModelLayout, plan: PartitionPlan, shard_index: int,
                params: Mapping[str, torch.Tensor], optimizer_state: dict[str, Any],
                version: int) -> None:
        """Install a checkpointed state (at start, before any request is served)."""
        with self.lock:
            self.plan, self.shard_index = plan, shard_index
            self._specs = layout.by_name()
            self.params = {s.name: params[s.name].reshape(s.shape).clone()
                           for s in layout.tensors}
            self._bytes = {}
            self._optimizer = self._optimizer_config.build(self.params.values())
            self._optimizer.load_state_dict(optimizer_state)
            self.layout = layout
            self.version = version
            self._hashed = None
            self.lock.notify_all()

    def wait_for_version(self, min_version: int, timeout_s: float,
                         poll: LongPoll | None = None) -> int:
        """Block until version >= min_version; DeadlineExceeded after timeout_s. `poll`
        (when given) is told before each wait: it may refuse (no slot, call cancelled)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self.version < min_version or self.layout is None:
                if self._closed:
                    raise Unavailable("server is shutting down")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(
                        f"version {min_version} not reached within {timeout_s:.1f}s "
                        f"(server is at version {self.version})")
                if poll is not None:
                    poll.before_wait()
                self.lock.wait(remaining)
            return self.version

    def wake(self) -> None:
        """Wake every waiter so it re-checks its condition (a call was cancelled)."""
        with self.lock:
            self.lock.notify_all()

    def byte_view(self, name: str) -> memoryview:
        """The raw little-endian bytes of one parameter; read it only under `lock`. Made
        once per parameter tensor, which every step changes in place (three torch calls
        fewer per tensor and version, issue #14)."""
        view = self._bytes.get(name)
        if view is None:
            flat = self.params[name].view(-1)
            view = self._bytes[name] = memoryview(flat.view(torch.uint8).numpy().data)
        return view

    def state_hash(self) -> str:
        """`state_digest` of the current version and parameters.

        Hashing a large model takes long (about 0.5 s per GiB), so it runs on a copy taken
        under the lock, one at a time (`_hash_lock`), and is remembered per version: callers
        that ask in a loop cost a push at most one copy per version (issue #13)."""
        with self._hash_lock:
            with self.lock:
                version = self.version
                if self._hashed is not None and self._hashed[0] == version:
                    return self._hashed[1]
                copies = {name: param.detach().clone() for name, param in self.params.items()}
            digest = state_digest(version, copies)
            self._hashed = (version, digest)
            return digest

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self.lock.notify_all()


def _shaped(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A flat gradient viewed in its parameter's shape (no view op when it has it)."""
    return grad if grad.shape == param.shape else grad.view(param.shape)
