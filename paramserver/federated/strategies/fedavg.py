"""FedAvg (McMahan et al. 2017): the example-weighted average of the client models."""

from paramserver.federated.strategies import Strategy
from paramserver.types import Aggregation

STRATEGY = Strategy("fedavg", Aggregation.WEIGHTED,
                    summary="global = sum(n_k * local_k) / sum(n_k)")
