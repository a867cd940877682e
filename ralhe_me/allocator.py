"""Keep freed heap memory in the process instead of handing it back to the system at every free.

Why: training allocates and frees the same large tensors at every step. With glibc's defaults,
blocks over 128 KiB (adaptively up to 32 MiB) come from mmap and go back at free, and a freed
heap top is trimmed, so every step faults its pages in again. Measured on a 200k-Gaussian SH3
encode (fast preset, 10 steps, 2 cores): 30.3 s of its 101.2 s were system time; with a 1 GiB
mmap threshold, a trim threshold meant as 64 GiB (see below) and a 256 MiB top pad, 7.7 s of
86.9 s, 5% more peak memory, the same bytes. (A 1M-Gaussian encode spent 1,249 s in the system against 1,340 s user.)
mallopt takes a C int: a trim threshold of 2**36 passed untyped was masked to 0 (trim at every
free past the top pad), and a 983k-voxel step still faulted about 128 MiB back in (14 steps:
2.33 against 1.88 million page faults with 2**31 - 1). The arguments are typed now, so a value
that does not fit raises instead. Set ``RALHE_MALLOC_DEFAULTS=1`` to keep the C library's defaults.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
_INT_MAX = (1 << 31) - 1  # mallopt's value is a C int
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 1 << 28))
_applied = None


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process; False where it is not glibc or the user opted out."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("RALHE_MALLOC_DEFAULTS") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt parameters like these)
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    _applied = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied
