"""The built-in federated client behind `paramserver client` and `federated`, on digits:
one client on its partition of the data, and an observer that scores the global model
round by round."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from paramserver.errors import DeadlineExceeded
from paramserver.polling import wait_for
from paramserver.security.credentials import ClientSecurity
from paramserver.types import CodecSpec, Role
from workers.attach import attach
from workers.data import client_shard, load_digits_dataset
from workers.federated import ClientReport, FederatedClient, LocalTraining
from workers.models import accuracy, digits_model
from workers.parameter_client import ParameterClient
from workers.probes import probe_status

log = logging.getLogger(__name__)


def run_client(servers: str, index: int, clients: int, rounds: int, training: LocalTraining,
               partition: str, codecs: Sequence[CodecSpec], seed: int = 0,
               security: ClientSecurity | None = None) -> ClientReport:
    """One client (`client-INDEX`) on its own partition of digits, until the global model
    reaches `rounds`."""
    data = load_digits_dataset()
    x, y = client_shard(data, partition, clients, index, seed)
    model = digits_model(training.model, seed=seed)
    with attach(model, servers, worker_id=f"client-{index}", codecs=codecs,
                overlap=False, security=security,
                secure_aggregation=training.secure_aggregation) as attached:
        return FederatedClient(attached, x, y, training, seed=seed * 7919 + index).run(rounds)


@dataclass
class FollowedRounds:
    """What the observer saw: the test accuracy after each round, the version each was
    measured at, and a digest of the final global model (same seed, same digest)."""

    accuracy: list[float] = field(default_factory=list)
    # The observer pulls the newest version: under load it can miss one, and then the
    # rounds in between show the accuracy of a later model. measured_at says so.
    measured_at: list[int] = field(default_factory=list)
    model_sha256: str = ""

    def unobserved(self) -> list[int]:
        """Rounds whose own model the observer never saw (scored with a later one)."""
        return [r for r, v in enumerate(self.measured_at, start=1) if v != r]


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the parameters' bytes, in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def follow_rounds(servers: str, rounds: int, on_round: Callable[[int, float], None],
                  alive: Callable[[], bool], poll_s: float = 2.0,
                  security: ClientSecurity | None = None, model_name: str = "mlp",
                  ) -> FollowedRounds:
    """Test accuracy of the global model after each round (an observer pulls every version),
    until `rounds`; raises RuntimeError if `alive()` turns false before (no client left)."""
    data = load_digits_dataset()
    model = digits_model(model_name)
    followed = FollowedRounds()
    accuracies = followed.accuracy

    def registered() -> bool:
        # Probe first: a short lazy federation may be over before the observer is ready
        every = [probe_status(a, security=security) for a in servers.split(",")]
        if all(s is not None and s.layout is not None for s in every):
            return True
        if not alive():
            raise RuntimeError("every client exited before the model was registered")
        return False

    wait_for("the first client registering the model", registered, timeout_s=300,
             period_s=0.2)
    with ParameterClient(servers, "round-observer", role=Role.OBSERVER, timeout_s=poll_s,
                         retry_s=0.0, connect_timeout_s=poll_s,
                         security=security) as observer:
        observer.attach(model)
        while len(accuracies) < rounds:
            try:
                version = observer.pull(len(accuracies) + 1, timeout_s=poll_s)
            except DeadlineExceeded:
                if not alive():
                    raise RuntimeError(f"no client is left: the federation stopped after "
                                       f"{len(accuracies)} of {rounds} rounds") from None
                continue
            value = accuracy(model, data.x_test, data.y_test)
            if version > len(accuracies) + 1:
                log.warning("the observer missed rounds %d-%d: they show the accuracy of "
                            "version %d", len(accuracies) + 1, version - 1, version)
            while len(accuracies) < min(version, rounds):
                accuracies.append(value)
                followed.measured_at.append(version)
                on_round(len(accuracies), value)
        followed.model_sha256 = model_digest(model)
    return followed
