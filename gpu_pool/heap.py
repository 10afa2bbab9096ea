"""The pool's C heap: freed image buffers stay for the next job instead of going back to the OS.

A job moves a few buffers of an image's size through a pool process (the
request's pixels, the model's input and output, the frame sent back: 0.75 MiB
each at 512x512 RGB). glibc's malloc serves a block over its mmap threshold
with a fresh mapping, and hands the top of its heap back to the OS past its
trim threshold. Both thresholds start low (128 KiB, 256 KiB) and rise only
when the process frees a big mapped block, so whether a job's buffers are
reused or mapped, faulted in and unmapped again depends on what the process
happened to free before. At bad0da9 nothing raised them: every job cost about
1,800 page faults and 2 ms more CPU on the event loop (``bench/pool_overhead.py``).
Setting them where glibc's own rule tops out (32 MiB, and twice that to trim)
makes every pool process reuse its buffers from the first job.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its dynamic threshold stops
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # as glibc sets it each time it raises the mmap threshold


def keep_freed_buffers() -> bool:
    """Fix malloc's thresholds (glibc only: elsewhere nothing happens); True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds %s", "set" if ok else "left as they were")
    return ok
