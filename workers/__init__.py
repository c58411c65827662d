"""The client side of paramserver: what training code imports.

    from workers import ParameterClient
    client = ParameterClient("127.0.0.1:50051", worker_id="w0")
    client.attach(model)           # register (or join) and pull the initial parameters
    ...; loss.backward()
    client.step(num_samples=len(batch))   # push param.grad, pull the new parameters in place
"""

from workers.connection import ServerConnection
from workers.parameter_client import ParameterClient

__all__ = ["ParameterClient", "ServerConnection"]
