"""FedAdam (Reddi et al. 2021): Adam on the server, over the averaged update."""

from paramserver.federated.strategies import Strategy
from paramserver.optimizer import OptimizerConfig
from paramserver.types import Aggregation

STRATEGY = Strategy("fedadam", Aggregation.WEIGHTED,
                    OptimizerConfig(name="adam", lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3),
                    summary="Adam(lr 0.01, betas (0.9, 0.99), eps 1e-3) on mean(delta)")
