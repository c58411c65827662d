"""FedAvgM (Hsu et al. 2019): server momentum on the averaged update."""

from paramserver.federated.strategies import Strategy
from paramserver.optimizer import OptimizerConfig
from paramserver.types import Aggregation

STRATEGY = Strategy("fedavgm", Aggregation.WEIGHTED,
                    OptimizerConfig(name="sgd", lr=1.0, momentum=0.9),
                    summary="v = 0.9 v + mean(delta); global -= v")
