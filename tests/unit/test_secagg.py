"""Secure aggregation's math without a network: Shamir, the quantiser, the PRG, the graph,
and whole rounds of clients and the server's `Aggregation` (dropouts included)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.federated.secagg import graph, masks, shamir
from paramserver.federated.secagg.aggregator import Aggregation
from paramserver.federated.secagg.client import ClientRound
from paramserver.federated.secagg.protocol import SecAggAborted
from paramserver.federated.secagg.quantize import MAX_SUM, Quantizer

secrets32 = st.binary(min_size=32, max_size=32)


@settings(max_examples=40, deadline=None)
@given(secret=secrets32, n=st.integers(1, 12), data=st.data())
def test_any_t_shares_give_the_secret_back(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, range(1, n + 1), t)
    chosen = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n,
                                unique=True))
    assert shamir.combine({x: shares[x] for x in chosen}) == secret
    assert all(shamir.share_from_bytes(shamir.share_to_bytes(y)) == y for y in shares.values())


@settings(max_examples=40, deadline=None)
@given(secret=secrets32, n=st.integers(2, 10), data=st.data())
def test_fewer_than_t_shares_do_not_give_the_secret(secret: bytes, n: int,
                                                    data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n))
    shares = shamir.split(secret, range(1, n + 1), t)
    chosen = sorted(shares)[:t - 1]
    try:
        assert shamir.combine({x: shares[x] for x in chosen}) != secret
    except ValueError:
        pass  # interpolates to a number too large for a 32-byte secret: detected


@settings(max_examples=30, deadline=None)
@given(secret=secrets32, t=st.integers(2, 6))
def test_sharing_draws_a_fresh_polynomial_every_time(secret: bytes, t: int) -> None:
    """The same secret shared twice gives other share values at the same points (random
    coefficients), so shares of one round say nothing about another's."""
    a = shamir.split(secret, range(1, t + 1), t)
    b = shamir.split(secret, range(1, t + 1), t)
    assert a != b  # fresh randomness each time (prob. of equality ~ 2^-521)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.lists(st.floats(-2, 2), min_size=5, max_size=5), min_size=1,
                       max_size=6),
       weights=st.data())
def test_quantised_weighted_mean_is_within_half_a_quantum(values: list[list[float]],
                                                          weights: st.DataObject) -> None:
    w = [weights.draw(st.integers(1, 500)) for _ in values]
    q = Quantizer.for_total_weight(2.0, sum(w))
    total = np.zeros(5, dtype=np.uint32)
    for x, wi in zip(values, w):
        total += q.encode(np.array(x), wi)
    exact = np.average(np.array(values), axis=0, weights=w)
    np.testing.assert_allclose(q.decode(total, sum(w)), exact, rtol=0, atol=q.quantum / 2 + 1e-12)


def test_quantiser_cannot_overflow_and_clips() -> None:
    q = Quantizer.for_total_weight(1.0, 1000)
    assert q.levels * 1000 <= MAX_SUM
    assert q.decode(q.encode(np.array([5.0, -5.0]), 1000), 1000).tolist() == pytest.approx(
        [1.0, -1.0])
    with pytest.raises(ValueError):
        Quantizer.for_total_weight(1.0, MAX_SUM + 1)


def test_prg_is_chacha20_and_agreement_is_symmetric() -> None:
    seed = bytes(range(32))
    stream = masks.prg(seed, 4)
    assert stream.dtype == np.uint32 and np.array_equal(stream, masks.prg(seed, 4))
    # RFC 7539 section 2.4.2's cipher with a zero counter/nonce is our definition: the first
    # keystream word of the all-zero key is 0xade0b876 (RFC 7539 A.1 test vector 1).
    assert int(masks.prg(bytes(32), 1)[0]) == int.from_bytes(bytes.fromhex("76b8e0ad"), "little")
    a, b = masks.KeyPair.generate(), masks.KeyPair.generate()
    assert masks.agree(a.private, b.public, masks.MASK_INFO) == masks.agree(
        b.private, a.public, masks.MASK_INFO)
    assert masks.agree(a.private, b.public, masks.MASK_INFO) != masks.agree(
        a.private, b.public, masks.SHARE_INFO)


@pytest.mark.parametrize("n", [2, 5, 10, 11, 40, 1000])
def test_graph_is_symmetric_regular_and_logarithmic(n: int) -> None:
    ids = [f"client-{i}" for i in range(n)]
    pairs = graph.neighbours(ids, seed=3, round_=7)
    k = graph.degree(n)
    assert all(len(pairs[c]) == k and c not in pairs[c] for c in ids)
    assert all(c in pairs[v] for c in ids for v in pairs[c])
    assert pairs == graph.neighbours(reversed(ids), seed=3, round_=7)
    if n >= 40:
        assert k <= 2 * np.ceil(np.log2(n))


def _run(n: int, drop_after_masking: AbstractSet[int], length: int = 50, ratio: float = 0.6,
         seen: list[np.ndarray] | None = None, drop_before_keys: AbstractSet[int] = frozenset()
         ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], Aggregation]:
    """A whole round in memory; returns (decoded mean, exact mean of the survivors,
    the clients' quantised inputs, the aggregation)."""
    rng = np.random.default_rng(n)
    updates = rng.normal(0, 0.3, (n, length))
    weights = rng.integers(1, 200, n)
    server = Aggregation(5, length, 2.0, ratio, 11,
                         on_vector=None if seen is None else lambda c, v: seen.append(v.copy()))
    clients = {f"c{i:02d}": ClientRound(f"c{i:02d}", 5, int(weights[i])) for i in range(n)}
    for c in clients.values():
        server.advertise(c.advertise())
    params = server.close_advertise()
    sharing = {cid: c for i, (cid, c) in enumerate(clients.items()) if i not in drop_before_keys}
    for cid, c in sharing.items():
        server.share_keys(cid, c.share_keys(server.params_for(cid)))
    quantised = []
    for cid, c in sharing.items():
        encoded = params.quantizer.encode(updates[int(cid[1:])], c.weight)
        quantised.append(encoded)
        server.masked_input(cid, c.mask(server.inbox(cid), encoded))
    survivors = server.close_masked()
    for cid, c in sharing.items():
        if int(cid[1:]) not in drop_after_masking:
            server.unmask(cid, c.unmask(survivors))
    mean, _ = server.sum()
    alive = [i for i in range(n) if i not in drop_before_keys]
    exact = np.average(updates[alive], axis=0, weights=weights[alive])
    return mean, exact, quantised, server


def _signed(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(float)


def test_the_server_sees_only_masked_vectors_whose_sum_is_the_weighted_mean() -> None:
    seen: list[np.ndarray] = []
    mean, exact, quantised, server = _run(6, set(), seen=seen)
    assert server.params is not None
    np.testing.assert_allclose(mean, exact, rtol=0, atol=server.params.quantizer.quantum / 2)
    assert len(seen) == 6
    for vector in seen:  # none equals, or correlates with, any client's quantised input
        for q in quantised:
            assert not np.array_equal(vector, q)
            assert abs(np.corrcoef(_signed(vector), _signed(q))[0, 1]) < 0.5


def test_clients_dropping_before_sharing_keys_are_left_out() -> None:
    mean, exact, _, server = _run(6, set(), drop_before_keys={1})
    assert server.params is not None
    np.testing.assert_allclose(mean, exact, rtol=0, atol=server.params.quantizer.quantum / 2)


@pytest.mark.parametrize("n,dropped", [(5, {0, 3}), (12, {2, 5, 9})])
def test_up_to_n_minus_t_dropouts_after_masking_are_recovered(n: int, dropped: set[int]) -> None:
    """A dropout's masked input is in the sum (it arrived): the mean is over everyone."""
    mean, exact, _, server = _run(n, dropped)
    assert server.params is not None
    if n == 5:
        assert len(dropped) == n - server.params.threshold  # the most the complete graph bears
    np.testing.assert_allclose(mean, exact, rtol=0, atol=server.params.quantizer.quantum / 2)


def test_fewer_than_t_unmasking_clients_abort_the_round() -> None:
    with pytest.raises(SecAggAborted, match="threshold"):
        _run(5, {0, 1, 3})


def test_a_client_never_reveals_both_secrets_of_a_neighbour() -> None:
    client = ClientRound("a", 0, 1)
    server = Aggregation(0, 4, 1.0, 0.6, 0)
    others = [ClientRound(c, 0, 1) for c in "bcd"]
    for c in [client, *others]:
        server.advertise(c.advertise())
    params = server.close_advertise()
    for c in [client, *others]:
        server.share_keys(c.client_id, c.share_keys(params))
    client.mask(server.inbox("a"), np.zeros(4, dtype=np.uint32))
    revealed = client.unmask(frozenset("abc"))
    assert {(s.owner, s.mask_key) for s in revealed} == {
        ("a", False), ("b", False), ("c", False), ("d", True)}
    with pytest.raises(SecAggAborted):
        client.unmask(frozenset("ab"))  # below the threshold: reveal nothing


def test_key_agreement_is_hkdf_sha256_of_x25519_as_specified() -> None:
    """docs/wire.md 5e, from RFC 7748 section 6.1's key pairs: another implementation
    derives the same pairwise seed from the same keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert masks.public_of(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    expected = HKDF(hashes.SHA256(), 32, salt=None, info=b"paramserver secagg mask").derive(shared)
    assert masks.agree(alice, bob_public, masks.MASK_INFO) == expected


def test_a_server_taking_a_plain_mean_states_weight_one_and_clients_use_it() -> None:
    """--aggregate mean (and DP): whatever weights clients advertise, the sum is a mean."""
    server = Aggregation(0, 3, 1.0, 0.6, 0, uniform=True)
    clients = [ClientRound(c, 0, w) for c, w in (("a", 50), ("b", 7), ("c", 300))]
    for c in clients:
        server.advertise(c.advertise())
    server.close_advertise()
    values = np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.1], [-0.3, 0.2, 0.2]])
    for c in clients:
        params = server.params_for(c.client_id)
        server.share_keys(c.client_id, c.share_keys(params))
        assert c.weight == 1 and params.keys()[c.client_id].weight == 1
    for c, x in zip(clients, values):
        encoded = params.quantizer.encode(x, c.weight)
        server.masked_input(c.client_id, c.mask(server.inbox(c.client_id), encoded))
    survivors = server.close_masked()
    for c in clients:
        server.unmask(c.client_id, c.unmask(survivors))
    mean, weight = server.sum()
    assert weight == 3
    np.testing.assert_allclose(mean, values.mean(axis=0), atol=params.quantizer.quantum)
