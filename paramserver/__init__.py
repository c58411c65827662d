"""paramserver: a gRPC parameter server for distributed PyTorch training.

The server side and what both sides share live here; the client side that training code
imports lives in the `workers` package.
"""

__version__ = "0.1.0"
