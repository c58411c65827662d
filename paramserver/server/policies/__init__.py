"""Update policies, one per mode, chosen from `POLICIES`.

| mode | policy | a push becomes an update |
| --- | --- | --- |
| sync | `SyncPolicy` | once every live worker (or a quorum) pushed the step: their mean |
| async | `AsyncPolicy` | at once, at lr / live workers (`--async-lr`; refused past `--max-staleness`) |
| ssp | `SspPolicy` | at once; pulls wait while a worker is > S steps ahead |
| federated | `RoundPolicy` | once the round's sampled clients reported (or it timed out) |
| fedbuff | `FedBuffPolicy` | once `--buffer` updates arrived, staleness-weighted |
"""

from __future__ import annotations

from collections.abc import Callable

from paramserver.server.policies.asynchronous import AsyncPolicy
from paramserver.server.policies.base import (
    PolicyContext,
    PolicyReport,
    ReceivedPush,
    StepWait,
    UpdatePolicy,
)
from paramserver.server.policies.fedbuff import FedBuffPolicy
from paramserver.server.policies.rounds import RoundPolicy
from paramserver.server.policies.ssp import SspPolicy
from paramserver.server.policies.sync import SyncPolicy
from paramserver.types import Mode

POLICIES: dict[Mode, Callable[[PolicyContext], UpdatePolicy]] = {
    Mode.SYNC: SyncPolicy,
    Mode.ASYNC: lambda context: AsyncPolicy(context, context.config.max_staleness,
                                            context.config.async_lr),
    Mode.SSP: SspPolicy,
    Mode.FEDERATED: RoundPolicy,
    Mode.FEDBUFF: FedBuffPolicy,
}


def make_policy(context: PolicyContext) -> UpdatePolicy:
    """The policy for the server's mode."""
    return POLICIES[context.config.mode](context)


__all__ = ["POLICIES", "PolicyContext", "PolicyReport", "ReceivedPush", "StepWait",
           "UpdatePolicy", "make_policy"]
