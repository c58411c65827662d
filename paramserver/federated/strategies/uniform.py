"""Uniform averaging: every client counts the same, whatever its size."""

from paramserver.federated.strategies import Strategy
from paramserver.types import Aggregation

STRATEGY = Strategy("uniform", Aggregation.MEAN, summary="global = mean(local_k)")
