"""Process-level settings for fast CPU inference, for applications to apply.

Nothing in the library calls ``keep_freed_memory``: it changes the whole process, so it is the
application's explicit choice (``mrcnn predict``, batch segmentation's actors, the Serve replicas and
the training workers apply it before building their model). Where it is applied, the Winograd rewrite
pays off too: pass ``optimize={"winograd": True}`` to ``mrcnn.Predictor``.

glibc's malloc gives every allocation above its mmap threshold (adaptive, 128 KiB to 32 MiB) a mapping of
its own and unmaps it on free. A detector allocates and frees its feature maps (tens of MB each at
800 px) on every forward pass, so every pass page-faults them in again and the kernel zeroes each page.
With torchvision's R50-FPN at 800 px that is about 630k page faults and 1.5 s of kernel time per photo
(220k and 0.5 s for our predictor). ``keep_freed_memory`` makes malloc keep freed memory in its heap
and reuse it instead (the effect of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` in the
environment, or of preloading jemalloc or tcmalloc, set from inside the process).

The price is that the process holds on to its peak heap: its resident memory does not fall after a
large pass (2.1 -> 2.5 GB for the R50-FPN predictor at 800 px). Numbers: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
ENV_VAR = "MRCNN_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_applied = False


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make this process's malloc reuse freed memory instead of returning it to the kernel (glibc only).

    Process-wide and idempotent. Allocations are served from the heap (no per-allocation mmap), and
    free memory at the top of the heap is given back only above ``trim_threshold`` bytes.

    Returns:
        True if the setting is (now or already) in effect; False where it does not apply: not glibc, or
        the environment variable ``MRCNN_KEEP_FREED_MEMORY`` is ``0``.
    """
    global _applied
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    with _lock:
        if _applied:
            return True
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        # mallopt returns 1 on success.
        _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
        return _applied


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` has taken effect in this process."""
    return _applied
