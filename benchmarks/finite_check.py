"""Cost of the server's finite check (issue #13) on a 100 MB push, next to what the push
itself costs the server (decoding `none` is free; applying is one optimizer step).

    python -m benchmarks.finite_check
"""

from __future__ import annotations

import time

import torch

from paramserver.server.push_checks import all_finite

NUMEL = 25_000_000  # 100 MB of float32
REPEATS = 10


def _best(fn) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    grad = torch.randn(NUMEL)
    param = torch.randn(NUMEL)
    fused = _best(lambda: all_finite(grad))
    elementwise = _best(lambda: bool(torch.isfinite(grad).all()))
    step = _best(lambda: param.add_(grad, alpha=-0.01))
    print(f"finite check on {NUMEL * 4 / 1e6:.0f} MB float32, 1 thread: sum trick "
          f"{fused * 1e3:.1f} ms, isfinite().all() {elementwise * 1e3:.1f} ms; "
          f"one SGD update of the same tensor {step * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
