"""Host memory for CPU training: freed blocks stay in the process for the next step (glibc's malloc).

A training step on a CPU allocates and frees the same tensors every step: activations, gradients and
the views' temporaries, from a hundred kilobytes to tens of megabytes each. By default glibc serves
blocks above its mmap threshold (128 KiB at first, raised as blocks are freed) with fresh mappings and
gives the top of its heap back to the system once more than its trim threshold is free there, so the
next step's blocks are new pages that fault on first touch: an elementwise op on a 1.5 MB tensor
then costs several times its arithmetic. ``keep_freed_memory`` sets the two thresholds so that
blocks below 32 MiB come from the heap and freed memory stays there, as the CUDA caching allocator
keeps device memory. The process's resident memory then stays at its peak rather than falling
between steps. It leaves the allocator alone where it is not glibc's or where the user has tuned it
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` in the environment,
or jemalloc / tcmalloc preloaded).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (and the workers it forks) once; True
    when they are set, False where the allocator is left as it is (not Linux with glibc, or tuned by
    the user). Safe to call repeatedly."""
    global _done
    if _done is None:
        _done = _set_thresholds()
    return _done


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux") or any(k in os.environ for k in USER_SETTINGS):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
