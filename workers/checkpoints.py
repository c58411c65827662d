"""Checkpoints from the training loop: `ps.state_dict()` / `ps.load_state_dict()` (#18).

Under DDP a checkpoint is the model's and the optimizer's state_dict; here the optimizer's
state (momentum, Adam's moments) and the version live on the servers, and the worker holds
its codecs' error-feedback residuals. `client_state` gathers all of it into a dict of bytes,
tensors and ints, which `torch.save` writes and `torch.load(weights_only=True)` reads;
`load_client_state` installs it on fresh servers (every worker of the job may call it: the
servers take the first and answer the others' identical state without change), then pulls
the restored parameters into the model, so training goes on exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

from paramserver.errors import FailedPrecondition
from workers.parameter_client import ParameterClient

FORMAT = 1


def client_state(client: ParameterClient) -> dict[str, Any]:
    """Every shard's state (in shard order), this worker's residuals and version."""
    shards = client._shards.run(lambda shard: client.connections[shard].get_state())
    return {
        "format": FORMAT,
        "version": client.version,
        "shards": shards,
        "residuals": [fb.state_dict() if fb is not None else {} for fb in client._feedback],
    }


def load_client_state(client: ParameterClient, state: dict[str, Any]) -> int:
    """Install `state` (from `client_state`) on the servers, restore the residuals and pull
    the restored parameters; returns the version the model holds now."""
    if state.get("format") != FORMAT:
        raise FailedPrecondition(f"not a ps.state_dict() of format {FORMAT}")
    shards = state["shards"]
    if len(shards) != len(client.connections):
        raise FailedPrecondition(f"the state holds {len(shards)} shards, but the model is on "
                                 f"{len(client.connections)} servers")
    versions = client._shards.run(lambda shard: client.connections[shard].set_state(
        shards[shard]))
    for feedback, residuals in zip(client._feedback, state["residuals"]):
        if feedback is not None and residuals:
            feedback.load_state_dict(residuals)
    skip_frozen, client.skip_frozen = client.skip_frozen, False  # the state has them too
    try:
        client.pull(versions)
    finally:
        client.skip_frozen = skip_frozen
    client._targets = list(versions)
    return client.version
