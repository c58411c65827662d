"""`ServerOptimizer`: the torch optimizer drop-in whose `step()` is a parameter-server step.

What it carries from the training loop to the servers (issue #18), each step:

- the learning rate of the wrapped optimizer's param groups, so an LR scheduler stepping the
  wrapped (or this) optimizer drives the servers' rate. Rule for a multi-worker job: every
  worker states its rate; a sync step applies the smallest rate stated (workers that run
  the same scheduler agree, as DDP's ranks do). Without a wrapped optimizer the servers'
  --lr applies.
- GradScaler: `scaler.step(optimizer)` hands this optimizer the loss scale and whether
  inf/NaN was found (`_step_supports_amp_scaling`, torch's contract for optimizers that
  handle scaling themselves); the push states the scale, which the servers divide out
  before aggregating, and a step with inf/NaN is skipped on the servers for every worker,
  as `GradScaler.step` skips `optimizer.step()` (the scaler's own update() then backs off).

The update rule itself is the servers' (`paramserver serve --optimizer ...`): wrapping an
optimizer of another type, or with other hyperparameters, is warned about once.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import torch

from paramserver.errors import InvalidArgument
from paramserver.optimizer import OptimizerConfig
from paramserver.types import StepOptions

if TYPE_CHECKING:
    from workers.attach import AttachedModel

_LR = re.compile(r"lr=[^,)]*(, )?")


class ServerOptimizer(torch.optim.Optimizer):
    """A drop-in for `torch.optim.Optimizer` whose `step()` pushes the gradients and pulls the
    servers' parameters (see the module docstring for what it carries to the servers).
    Wrapping an existing optimizer keeps its param groups (so LR schedulers and `zero_grad`
    work as before) and sends their learning rate with each step.
    """

    _step_supports_amp_scaling = True  # GradScaler.step passes grad_scale and found_inf

    def __init__(self, attached: AttachedModel,
                 wrapped: torch.optim.Optimizer | None = None) -> None:
        self.attached = attached
        self.wrapped = wrapped
        if wrapped is not None:
            super().__init__(wrapped.param_groups, dict(wrapped.defaults))
            self.param_groups = wrapped.param_groups  # shared: schedulers see one list
            _warn_if_rule_differs(wrapped, attached.server_optimizer)
        else:
            params = [p for p in attached.model.parameters() if p.requires_grad]
            super().__init__(params, {})
        self.num_samples = 1  # weight of the next step under --aggregate weighted

    def step_options(self) -> StepOptions:
        """This step's rate, loss scale and inf/NaN flag (GradScaler sets the last two as
        attributes just before calling step())."""
        scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        return StepOptions(lr=self._lr(),
                           grad_scale=1.0 if scale is None else float(scale),
                           found_inf=found_inf is not None and bool(found_inf.item() > 0))

    def _lr(self) -> float | None:
        if self.wrapped is None:
            return None
        rates = {float(group["lr"]) for group in self.param_groups if "lr" in group}
        if len(rates) > 1:
            raise InvalidArgument(
                f"param groups with different learning rates {sorted(rates)}: the servers "
                "apply one rate to every parameter; use one rate (or one param group)")
        return rates.pop() if rates else None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.attached.step(num_samples=self.num_samples, options=self.step_options())
        if self.wrapped is not None:  # an LR scheduler on it counts this as its step
            self.wrapped._opt_called = True  # type: ignore[attr-defined]
        return loss


def _warn_if_rule_differs(wrapped: torch.optim.Optimizer, server: str) -> None:
    """Warn (once per optimizer) when the wrapped optimizer's rule is not the servers'."""
    mine = _describe(wrapped)
    mine = mine if mine is None else _LR.sub("", mine)
    if mine is not None and mine == _LR.sub("", server):
        return
    warnings.warn(
        f"the wrapped {type(wrapped).__name__} is not what the servers apply: they run "
        f"{server} (serve --optimizer/--momentum/...), the wrapped optimizer "
        f"{mine or 'has a rule the servers do not offer'}; only its learning rate reaches "
        "the servers. Start the servers with the same rule, or wrap a matching optimizer.",
        UserWarning, stacklevel=3)


def _describe(optimizer: torch.optim.Optimizer) -> str | None:
    """The optimizer in the servers' `OptimizerConfig.describe()` form, if it is one."""
    d = optimizer.defaults
    if type(optimizer) is torch.optim.SGD:
        return OptimizerConfig(name="sgd", lr=1.0, momentum=float(d["momentum"]),
                               weight_decay=float(d["weight_decay"]),
                               nesterov=bool(d["nesterov"])).describe()
    if type(optimizer) is torch.optim.Adam and not d.get("amsgrad"):
        beta1, beta2 = d["betas"]
        return OptimizerConfig(name="adam", lr=1.0, beta1=float(beta1), beta2=float(beta2),
                               eps=float(d["eps"]),
                               weight_decay=float(d["weight_decay"])).describe()
    return None
