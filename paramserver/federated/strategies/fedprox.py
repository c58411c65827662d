"""FedProx (Li et al. 2020): FedAvg, with clients kept near the global model by a proximal
term mu/2 * ||w - w_global||^2 in their local loss (helps on heterogeneous clients)."""

from paramserver.federated.strategies import Strategy
from paramserver.types import Aggregation

STRATEGY = Strategy("fedprox", Aggregation.WEIGHTED, prox_mu=0.01,
                    summary="FedAvg + client proximal term mu/2 ||w - w_global||^2")
