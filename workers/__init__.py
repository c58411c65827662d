"""The client side of paramserver: what training code imports.

    import workers

    ps = workers.attach(model, "127.0.0.1:50051")   # register (or join), pull the parameters
    ...; loss.backward()                             # pushes overlap backward, bucket by bucket
    ps.step(num_samples=len(batch))                  # finish the push, pull the new parameters

`ps.optimizer(existing_optimizer)` gives a drop-in whose `optimizer.step()` does the same.
`ParameterClient` is the lower-level client (no hooks, explicit push and pull).
"""

from workers.attach import AttachedModel, attach
from workers.connection import ServerConnection
from workers.environment import WorkerIdentity
from workers.federated import FedAvg
from workers.parameter_client import ParameterClient
from workers.server_optimizer import ServerOptimizer

__all__ = ["AttachedModel", "FedAvg", "ParameterClient", "ServerConnection", "ServerOptimizer",
           "WorkerIdentity", "attach"]
