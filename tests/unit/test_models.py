"""The built-in models: initialised from their seed alone, on any thread (issue #17)."""

from __future__ import annotations

import threading

import torch
from torch import nn

from workers.models import digits_mlp


def _values(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_digits_mlp_draws_what_the_seeded_global_generator_would() -> None:
    """The same values as `torch.manual_seed(seed)` then the layers (results stay
    comparable with runs before the fix), and the global generator is left alone."""
    state = torch.random.get_rng_state()
    torch.manual_seed(7)
    want = _values(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    got = _values(digits_mlp(hidden=32, seed=7))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.random.set_rng_state(state)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_digits_mlp_is_the_same_when_threads_build_models_at_once() -> None:
    """Simulated clients build their models on their threads while others seed and draw
    from torch's global generator; the seeding-the-global-generator version gave some of
    them other parameters (so the model a run registered depended on thread timing)."""
    want = _values(digits_mlp(seed=1))
    stop = threading.Event()
    got: list[list[torch.Tensor]] = []

    def build() -> None:
        for _ in range(30):
            got.append(_values(digits_mlp(seed=1)))

    def other_user() -> None:  # e.g. the observer building its own model meanwhile
        while not stop.is_set():
            torch.manual_seed(99)
            torch.rand(64)

    noise = threading.Thread(target=other_user)
    noise.start()
    builders = [threading.Thread(target=build) for _ in range(4)]
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join(60)
    stop.set()
    noise.join(10)
    assert len(got) == 120
    wrong = sum(not all(torch.equal(a, b) for a, b in zip(values, want)) for values in got)
    assert wrong == 0, f"{wrong} of {len(got)} models built on threads differ from the seed's"


def test_ctr_model_draws_what_the_seeded_global_generator_would() -> None:
    """The CTR model takes the same private-generator route: the values, the parameter
    order (the order the wire flattens them in) and the global generator are as before."""
    from workers.ctr_model import EMBEDDING_STD, CtrModel

    state = torch.random.get_rng_state()
    torch.manual_seed(5)
    tables = [nn.EmbeddingBag(rows, 8, mode="sum", sparse=True) for rows in (30, 7)]
    for table in tables:
        nn.init.normal_(table.weight, std=EMBEDDING_STD)
    want = [t.weight.detach().clone() for t in tables]
    want += _values(nn.Linear(2, 8))
    want += _values(nn.Sequential(nn.Linear(3 * 8 + 3, 16), nn.ReLU(), nn.Linear(16, 16),
                                  nn.ReLU(), nn.Linear(16, 1)))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    model = CtrModel((30, 7), dim=8, dense_features=2, hidden=16, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.random.set_rng_state(state)
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["tables.0.weight", "tables.1.weight", "dense.weight"]
    assert all(torch.equal(a, b) for a, b in zip(_values(model), want, strict=True))
