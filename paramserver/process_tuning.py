"""Process-level tuning for long-running server and worker processes.

Measured with py-spy and page-fault counts on 100 MB push+pull rounds (benchmarks/):
- glibc serves each ~1 MiB gRPC message from a fresh mmap (its dynamic threshold sits at
  128 KiB-32 MiB), and every fresh page faults: 6k-22k faults per round on the server, ~30 ms
  each time it happens. Raising the mmap threshold to 32 MiB and the trim threshold to 1 GiB
  keeps those buffers in the reused heap. Both must be set: setting only one turns off
  glibc's automatic tuning and made things worse (74k faults per round).
- torch leaves a large heap of long-lived objects, so full garbage collections took
  110-127 ms; `gc.freeze()` after start-up moves them out of the collector's way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def tune_process() -> bool:
    """Apply the allocator and GC settings above; True if the allocator took them.

    Call once, after imports and start-up allocations, in processes this project owns
    (`paramserver serve`, the CLI's workers); library users decide for their own process.
    """
    applied = False
    name = ctypes.util.find_library("c")
    if name is not None:
        try:
            mallopt = ctypes.CDLL(name).mallopt
            applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # not glibc: nothing to tune
            applied = False
    gc.collect()
    gc.freeze()
    log.debug("process tuned (allocator thresholds %s)", "set" if applied else "unchanged")
    return applied
