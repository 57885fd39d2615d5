"""Handing freed heap memory back to the operating system during long loops over clips.

glibc raises its mmap threshold each time a large block is freed, after which clip-sized
blocks come from the heap; a loop that renders clips and runs a model on them then leaves that
heap fragmented, its free pages never returned. The process's memory grows with the number of
clips until the kernel kills it. Trimming the heap every few batches bounds it for a call that
costs little beside a batch; a fixed mmap threshold would bound it too, but every one of the
model's large allocations would then map fresh pages."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from typing import Callable, Optional

__all__ = ["release_free_heap"]


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only: other C libraries have no such call
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system where the C library can (glibc);
    whether it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
