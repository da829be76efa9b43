"""Keep freed memory in the process during training (glibc only).

glibc's ``malloc`` hands large blocks back to the kernel when they are freed (``mmap`` above a
threshold, heap trimming above another), so a training step that frees and re-allocates its
activations writes into freshly zeroed pages again and again. An over-parameterized student holds
2.4x the parameters, gradients and AdamW state. Measured on the 6-layer BERT-base student,
32x128 AdamW steps on 2 CPU cores, steady state: minor page faults per step 10k-180k -> 0, median
step plain 4.80-5.28 s -> 4.71 s, L=3 7.49 s -> 7.22 s (``benchmarks/results/README.md``). The
price: the process keeps its peak memory until it exits, which a training run reaches anyway.

``opdf finetune`` and ``opdf distill`` call :func:`keep_freed_memory` at start; library users may
call it themselves. ``OPDF_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory"]

# mallopt(3) parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the reusable heap
TRIM_THRESHOLD = 2**31 - 1  # never give the heap's free top back to the kernel


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed memory instead of returning it to the kernel.

    Returns True when the settings were applied; False (and nothing changes) on other C libraries
    or platforms, or when ``OPDF_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get("OPDF_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
