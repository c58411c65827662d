"""Federated learning on the parameter servers: rounds, strategies, partitioners.

The server side is an update policy (`rounds.RoundPolicy`, `fedbuff.FedBuffPolicy`); a
strategy (`strategies/`) is one module that says how updates are weighted, which server
optimizer applies their average, and what the client adds to its local loss.
"""
