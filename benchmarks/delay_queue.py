"""`python -m benchmarks.delay_queue`: moved to `testbed.delay_queue` (the test bed now
delays and drops with it where the kernel has no sch_netem); kept so that the command in
benchmarks/RESULTS.md still runs."""

import sys

from testbed.delay_queue import main

if __name__ == "__main__":
    sys.exit(main())
