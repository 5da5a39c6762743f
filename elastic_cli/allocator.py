"""Host memory policy: keep freed memory for reuse instead of handing it back to the OS (glibc).

On the CPU every activation, gradient and logit buffer is a malloc. glibc serves buffers above its
mmap threshold (128 KiB, raised on the fly up to 32 MiB) by fresh mmaps and gives the top of the
heap back above its trim threshold, so a training step re-faults the same megabytes at every step:
3,500-15,000 page faults and 8-26 ms of system time in a 150-180 ms tiny-recipe step on the CPU
(getrusage around the step; tests/test_allocator.py counts the faults).
Fixing both thresholds (`mallopt`) keeps what a step freed for the next one: the process holds its
high-water mark, as PyTorch's CUDA caching allocator does on the GPU.

Applied once by the `elastic` entry point (and so in every torchrun worker). Left alone where the
user chose: `ELASTIC_MALLOC=system`, or glibc's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ /
MALLOC_TOP_PAD_ in the environment; a no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit): larger buffers are still mmapped
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept up to 1 GiB
STREAM_MMAP_THRESHOLD = 128 << 10  # glibc's default, but fixed (no dynamic raise after a free)
STREAM_TRIM_THRESHOLD = 128 << 10  # glibc's default
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied = "system"  # what `policy()` reports: "system" until `keep_freed_memory` changes it


def _glibc():
    """The process's C library if it is glibc (it has gnu_get_libc_version and mallopt), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory(environ=os.environ, libc=None) -> str:
    """Set glibc's mmap and trim thresholds (unless the user chose, see the module doc); returns
    the policy now in force, as `policy()` reports it."""
    return _set(environ, libc, MMAP_THRESHOLD, TRIM_THRESHOLD,
                f"kept (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 30} GiB)")


def return_large_buffers(environ=os.environ, libc=None) -> str:
    """For streaming work (`elastic prepare`): buffers from STREAM_MMAP_THRESHOLD up are mmapped and
    handed back when freed, and the heap is trimmed as glibc does by default. With the policy above, or
    glibc's dynamic threshold, the megabyte strings and token lists of a stream of blocks (each a bit
    different in size) fragment the heap and the process grows by hundreds of MB over a large document
    (docs/internals.md, Data). Same opt-outs as `keep_freed_memory`; returns the policy in force."""
    return _set(environ, libc, STREAM_MMAP_THRESHOLD, STREAM_TRIM_THRESHOLD,
                f"returned (glibc mmap threshold {STREAM_MMAP_THRESHOLD >> 10} KiB)")


def _set(environ, libc, mmap_threshold: int, trim_threshold: int, name: str) -> str:
    """mallopt both thresholds unless the user chose (ELASTIC_MALLOC=system, glibc's MALLOC_* variables)
    or the C library is not glibc; the policy in force, named `name` once set."""
    global _applied
    if environ.get("ELASTIC_MALLOC", "") == "system" or any(k in environ for k in USER_SETTINGS):
        return _applied
    libc = _glibc() if libc is None else libc
    if libc is None:
        return _applied
    if libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold):
        _applied = name
    return _applied


def policy() -> str:
    """"system" (the C library's defaults) or how freed memory is kept, for `elastic bench` to record."""
    return _applied
