"""Secure aggregation for federated rounds (Bonawitz et al. 2017, SecAgg+ of Bell et al. 2020).

The server learns only the sum of the sampled clients' updates. Each client quantises its
weighted update into the ring Z_{2^32} (`quantize`), adds a self mask and pairwise masks
from X25519 key agreement with its neighbours in a seeded sparse graph (`masks`, `graph`);
the pairwise masks cancel in the sum, the self masks are removed once the server learns the
survivors' mask seeds, and a client that dropped after sharing its keys is recovered from
Shamir shares (`shamir`) that its neighbours reveal. `client` and `aggregator` hold the two
sides of one round as pure state machines (no network); `protocol` the records they trade.
The wire format is docs/wire.md section "Secure aggregation".
"""
