"""Why DP-FedAvg on 10 digits clients cannot reach 0.80 at epsilon 8 (issue #17, item 2).

The arithmetic, with the server's own accountant (`noise_for_epsilon`, dp_accounting's RDP
accountant), at q = 1 (every client every round), delta 1e-5:

1. R rounds at noise multiplier z compose to one Gaussian mechanism of z / sqrt(R) (RDP of
   the Gaussian adds up), so a fixed epsilon fixes sqrt(R) / z: it prints ~1.57 for every R.
2. Round t moves the model by mean_t + noise_t: the mean of m clipped updates has norm <= C,
   the noise N(0, (z*C/m)^2) per coordinate. After R rounds of a linear server step (SGD,
   with or without momentum, any lr) the model moved by at most R*C of signal, and by noise
   of std at least sqrt(R)*z*C/m = R*C / (1.57 m) per coordinate (equal weights per round
   are best, by Cauchy-Schwarz): over d parameters, **noise / signal >= sqrt(d) / (1.57 m)**,
   whatever R, C, the local training and the server lr. At m = 10: 1.62 for the logistic
   regression (d = 650), 6.2 for the MLP (d = 9,610). Real rounds do worse: the clients'
   clipped updates do not all point the same way.
3. How accurate can a linear digits classifier with that much noise be? Train the best
   direction for it centrally, on all the training data, without privacy, knowing the noise
   (cross-entropy averaged over noise draws of the given ratio), then score its test
   accuracy over fresh noise draws. Also the class-mean direction (what small steps of
   gradient descent from zero point to).

    python -m benchmarks.fed_dp_bound [--report FILE]     # ~11 min on a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from paramserver.federated.privacy import noise_for_epsilon
from workers.data import load_digits_dataset

EPSILON, DELTA = 8.0, 1e-5
PARAMETERS = {"logreg": 650, "mlp": 9610}
CLIENTS = (10, 20, 30, 100)


def _features(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1)], dim=1)  # the bias as a 65th input


def noisy_accuracy(direction: torch.Tensor, ratio: float, draws: int = 200,
                  ) -> tuple[float, float]:
    """Mean and std over noise draws of the test accuracy of `direction` (10 x 65, scaled
    to norm 1) plus isotropic noise of norm ~`ratio`."""
    data = load_digits_dataset()
    x, y = _features(data.x_test), data.y_test
    unit = direction / direction.norm()
    generator = torch.Generator().manual_seed(1)
    std = ratio / math.sqrt(unit.numel())
    accuracies = [float(((x @ (unit + std * torch.randn(unit.shape, generator=generator)).T)
                         .argmax(1) == y).float().mean()) for _ in range(draws)]
    return statistics.mean(accuracies), statistics.stdev(accuracies)


def noise_aware_direction(ratio: float, steps: int = 2000, draws: int = 64) -> torch.Tensor:
    """The linear classifier trained centrally (all training data, no privacy) to do best
    under isotropic noise of `ratio` times its norm: Adam on the cross-entropy averaged
    over `draws` noise draws per step, with a learnt temperature."""
    torch.manual_seed(0)
    data = load_digits_dataset()
    x, y = _features(data.x_train), data.y_train
    weight = torch.randn(10, x.shape[1], requires_grad=True)
    log_temperature = torch.tensor(1.0, requires_grad=True)
    optimizer = torch.optim.Adam([weight, log_temperature], lr=0.03)
    std = ratio / math.sqrt(weight.numel())
    for _ in range(steps):
        noisy = weight / weight.norm() + std * torch.randn(draws, *weight.shape)
        logits = torch.einsum("nf,scf->snc", x, noisy) * log_temperature.exp()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y.repeat(draws))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach()


def class_means() -> torch.Tensor:
    """Each class's mean image minus the overall mean (no bias)."""
    data = load_digits_dataset()
    means = torch.stack([data.x_train[data.y_train == c].mean(0) for c in range(10)])
    return torch.cat([means - means.mean(0), torch.zeros(10, 1)], dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path,
                        help="write every figure here as JSON (default: runs/fed_dp_bound-*)")
    args = parser.parse_args()
    started = time.monotonic()
    torch.set_num_threads(1)
    print(f"epsilon {EPSILON} at delta {DELTA}, q = 1 (RDP accountant):")
    budget = []
    for rounds in (1, 3, 5, 10, 30):
        z = noise_for_epsilon(EPSILON, DELTA, 1.0, rounds)
        budget.append({"rounds": rounds, "noise_multiplier": z,
                       "sqrt_rounds_over_z": math.sqrt(rounds) / z})
        print(f"  {rounds:>2} rounds: z = {z:.3f}, sqrt(R)/z = {math.sqrt(rounds) / z:.3f}")
    per_z = statistics.mean(b["sqrt_rounds_over_z"] for b in budget)
    rows = []
    print(f"\n{'clients':>7} {'model':>6} {'noise/signal >=':>15} {'noise-aware linear':>19} "
          f"{'class means':>12}")
    for clients in CLIENTS:
        for model, size in PARAMETERS.items():
            ratio = math.sqrt(size) / (per_z * clients)
            row: dict[str, object] = {"clients": clients, "model": model, "parameters": size,
                                      "noise_over_signal_at_least": ratio}
            if model == "logreg":
                best = noisy_accuracy(noise_aware_direction(ratio), ratio)
                means = noisy_accuracy(class_means(), ratio)
                row.update(noise_aware=best, class_means=means)
                shown = f"{best[0]:>10.3f} +- {best[1]:.3f} {means[0]:>7.3f} +- {means[1]:.3f}"
            else:
                shown = f"{'-':>19} {'-':>12}"
            rows.append(row)
            print(f"{clients:>7} {model:>6} {ratio:>15.2f} {shown}", flush=True)
    harness.write_report(harness.report_path("fed_dp_bound", args.report),
                         {"epsilon": EPSILON, "delta": DELTA, "budget": budget, "rows": rows})
    print(f"[{time.monotonic() - started:.0f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
