"""Federated learning's own pieces: strategies, client sampling, update screening, data
partitioning.

The server side of a round is an update policy like any other
(`paramserver.server.policies.rounds`, `...fedbuff`), which uses sampling and screening from
here; the client side lives in `workers`. A strategy (`strategies/`) is one module that says
how updates are weighted, which server optimizer applies their average, and what the client
adds to its local loss.
"""
