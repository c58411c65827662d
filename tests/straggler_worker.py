"""`paramserver worker` as a deliberate straggler, for the fault tests: the normal worker
command, sleeping `--step-delay` seconds after each backward pass, before the push.

    python -m tests.straggler_worker --step-delay 0.5 --servers HOST:PORT --rank 2 ...

The delay is injected through the trainer's `before_push` hook, so the product has no
straggler flag.
"""

from __future__ import annotations

import argparse
import sys
import time

from paramserver.cli import worker
from paramserver.cli.main import build_parser


def main(argv: list[str] | None = None) -> int:
    ours = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ours.add_argument("--step-delay", type=float, required=True,
                      help="seconds to sleep before every push")
    own, rest = ours.parse_known_args(argv)
    args = build_parser().parse_args(["worker", *rest])
    return worker.run(args, before_push=lambda step: time.sleep(own.step_delay))


if __name__ == "__main__":
    sys.exit(main())
