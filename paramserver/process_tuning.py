"""Process-level tuning for long-running server and worker processes.

Measured with py-spy and page-fault counts on 100 MB push+pull rounds (benchmarks/):
- glibc serves each ~1 MiB gRPC message from a fresh mmap (its dynamic threshold sits at
  128 KiB-32 MiB), and every fresh page faults: 6k-22k faults per round on the server, ~30 ms
  each time it happens. Raising the mmap threshold to 32 MiB and the trim threshold to 1 GiB
  keeps those buffers in the reused heap. Both must be set: setting only one turns off
  glibc's automatic tuning and made things worse (74k faults per round).
- torch leaves a large heap of long-lived objects, so full garbage collections took
  110-127 ms; `gc.freeze()` after start-up moves them out of the collector's way.
- glibc gives threads arenas of their own (up to 8 per core); with the trim threshold
  raised nothing goes back, so a server's resident memory crept up as more gRPC handler
  threads took turns (+4.5 MiB over a 10k-push soak, +1.8 MiB with 2 arenas: issue #14).
  `cap_arenas` limits them to MALLOC_ARENAS; call it before threads start allocating.
- With the trim threshold raised, what a server's registration took on the way (messages,
  windows: ~9 MiB at 100 MB) stayed resident beside the model for good; `trim_heap` once
  the model is installed gives those pages back (not per step: that is what the raised
  threshold is for).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def _mallopt() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return None


def cap_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """At most `arenas` glibc malloc arenas in this process (as MALLOC_ARENA_MAX does);
    True if the allocator took it. Arenas made before the call stay: call it early."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, arenas))


def trim_heap() -> bool:
    """Give the free pages of every malloc arena back to the system (glibc's
    `malloc_trim(0)`); False where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name is not None else None
    except (OSError, AttributeError):
        trim = None
    return trim is not None and bool(trim(0))


def tune_process() -> bool:
    """Apply the allocator and GC settings above; True if the allocator took them.

    Call once, after imports and start-up allocations, in processes this project owns
    (`paramserver serve`, the CLI's workers); library users decide for their own process.
    """
    mallopt = _mallopt()
    applied = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and cap_arenas()
    gc.collect()
    gc.freeze()
    log.debug("process tuned (allocator thresholds %s)", "set" if applied else "unchanged")
    return applied
