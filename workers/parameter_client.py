"""Model-level client: register a torch model, push its gradients, pull its parameters.

Pulled parameters are written into the model's own tensors in place (through a pinned host
mirror when the model is on a GPU), so optimizers and hooks that hold references still see
the current values.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from paramserver.errors import FailedPrecondition, InvalidArgument
from paramserver.types import CodecSpec, Mode, ModelLayout, PushResult, Role, Session, TensorSpec
from workers.connection import ServerConnection
from workers.tensor_io import HostMirror

log = logging.getLogger(__name__)


class ParameterClient:
    """A worker (or observer) attached to one parameter server.

    Typical loop, after `attach(model)`:

        loss.backward()
        client.step(num_samples=len(batch))

    `version` is the server version of the parameters now in the model.
    """

    def __init__(self, address: str, worker_id: str, role: Role = Role.WORKER,
                 push_codecs: Sequence[CodecSpec] = (), pull_codecs: Sequence[CodecSpec] = (),
                 timeout_s: float = 60.0, connect_timeout_s: float = 30.0) -> None:
        self.worker_id = worker_id
        self.role = role
        self.connection = ServerConnection(address, timeout_s)
        self.connection.wait_ready(connect_timeout_s)
        self.session: Session = self.connection.handshake(worker_id, role, push_codecs,
                                                          pull_codecs)
        self.version = self.session.version
        self.model: nn.Module | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._specs: dict[str, TensorSpec] = {}
        self._mirrors: dict[str, HostMirror] = {}

    # ---- setup -----------------------------------------------------------------------

    def attach(self, model: nn.Module) -> bool:
        """Register the model's parameters (or join the registered model), then pull them.

        Returns True when this call created the model on the server. Every worker starts
        from the same parameters: the server's, not its own initialisation.
        """
        params = dict(model.named_parameters())
        if not params:
            raise InvalidArgument("the model has no parameters to train")
        layout = ModelLayout(tuple(TensorSpec.of(n, p) for n, p in params.items()))
        self.model = model
        self._params = params
        self._specs = {s.name: s for s in layout.tensors}
        self._mirrors = {n: HostMirror(p) for n, p in params.items()}
        registered = self.session.layout
        if registered is not None:
            reason = registered.describe_difference(layout)
            if reason:
                raise FailedPrecondition(f"server holds a different model: {reason}")
        if self.role is Role.OBSERVER:  # observers read; they never register
            if registered is None:
                raise FailedPrecondition("no model is registered on the server yet")
            self.pull(0)
            return False
        values = None if registered is not None else [
            self._mirrors[n].bytes_of(p) for n, p in params.items()]
        result = self.connection.register(layout, values)
        self.pull(result.version)
        return result.created

    # ---- the step --------------------------------------------------------------------

    def push(self, step: int | None = None, num_samples: int = 1) -> PushResult:
        """Push `param.grad` of every parameter that has one; `step` defaults to `version`."""
        names = [n for n, p in self._params.items() if p.grad is not None]
        if not names:
            raise InvalidArgument("no parameter has a gradient: call backward() first")
        specs = [self._specs[n] for n in names]
        payloads = [self._mirrors[n].bytes_of(self._params[n].grad) for n in names]
        return self.connection.push(self.version if step is None else step, specs, payloads,
                                    num_samples)

    def pull(self, min_version: int = 0, timeout_s: float | None = None) -> int:
        """Wait for version >= min_version and copy the parameters into the model in place."""
        targets: dict[int, np.ndarray] = {}
        names: list[str] = []

        def sink(index: int, offset: int, data: memoryview) -> None:
            target = targets.get(index)
            if target is None:
                name = names[index]
                target = targets[index] = self._mirrors[name].writable_bytes(self._params[name])
            if offset + data.nbytes > target.nbytes:
                raise InvalidArgument(f"server sent {offset + data.nbytes} bytes for "
                                      f"{names[index]!r}, which holds {target.nbytes}")
            target[offset:offset + data.nbytes] = np.frombuffer(data, dtype=np.uint8)

        def on_header(version: int, specs: tuple[TensorSpec, ...]) -> None:
            for spec in specs:
                if self._specs.get(spec.name) != spec:
                    raise FailedPrecondition(f"server tensor {spec.name!r} does not match "
                                             "the attached model")
            names.extend(s.name for s in specs)

        with torch.no_grad():
            version, specs = self.connection.pull(min_version, sink, timeout_s=timeout_s,
                                                  on_header=on_header)
            for name in names:
                self._mirrors[name].commit(self._params[name])
        self.version = version
        return version

    def step(self, num_samples: int = 1) -> PushResult:
        """Push this step's gradients and bring back the parameters of the next version."""
        result = self.push(num_samples=num_samples)
        # Sync: wait for the step to close. Async: at least our own update is in.
        self.pull(self.version + 1 if self.session.mode is Mode.SYNC else result.version)
        return result

    # ---- misc ------------------------------------------------------------------------

    @property
    def bytes_pushed(self) -> int:
        return self.connection.bytes_pushed

    @property
    def bytes_pulled(self) -> int:
        return self.connection.bytes_pulled

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ParameterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

