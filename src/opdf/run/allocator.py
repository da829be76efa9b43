"""Keep freed memory in the process during training (glibc only).

glibc's ``malloc`` hands large blocks back to the kernel when they are freed (``mmap`` above a
threshold, heap trimming above another), so a training step that frees and re-allocates its
activations writes into freshly zeroed pages again and again. Measured by hand (8 steps per
process, steps 4-8 counted; ``benchmarks/results/README.md`` says how) on the 6-layer BERT-base
student, 32x128 AdamW steps on 2 CPU cores: the plain model's minor page faults per step drop from
10k-180k to 0 and its median step from 4.80-5.28 s to 4.71 s; the L=3 student's from 7.49 s to
7.22 s. The price: the process keeps its peak memory until it exits (a training run returns to
its peak every step anyway), and the peak itself can grow a few percent from fragmentation
(3569 -> 3690 MiB for the plain step in the committed overhead runs).

``opdf finetune`` and ``opdf distill`` call :func:`keep_freed_memory` at start; library users may
call it themselves, at any point. The heap takes a few rounds to settle: torch's 64-byte aligned
requests do not fit the freed block of the same size until freed neighbours have coalesced (a
100 MB tensor freed and made again: faulted in on ~8 rounds in a bare ``import torch`` process,
~3 with the training stack loaded, then never; glibc's default faults it in every round).
``OPDF_KEEP_FREED_MEMORY=0`` turns it off.
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

    Returns True when both settings were applied; False on other C libraries or platforms, when
    ``OPDF_KEEP_FREED_MEMORY`` is ``0``/``false``/``no``/``off``, or when glibc refused one.
    """
    if os.environ.get("OPDF_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
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
