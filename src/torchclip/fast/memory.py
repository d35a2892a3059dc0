"""Large inference temporaries on transparent huge pages: one page fault per 2 MiB instead of 512.

A fresh process's large-batch forward page-faults on its big temporaries: glibc maps blocks above its
mmap threshold afresh on every call and trims the heap's freed top back to the kernel, so the same memory
is faulted in again, call after call, 4 KiB at a time. ``empty`` allocates as ``torch.empty`` does and then
advises the kernel (``madvise(MADV_HUGEPAGE)``) to back the buffer's 2 MiB-aligned interior with huge
pages. It changes nothing else: not the allocator, not the process's other memory, not a single value.

It acts only on Linux CPU tensors of at least ``MIN_BYTES``, only where the kernel's THP mode is
``madvise`` (with ``always`` the kernel does this by itself, with ``never`` it cannot), and can be switched
off with ``TORCHCLIP_HUGEPAGES=0`` or by setting ``ENABLED`` to False. BENCHMARKS.md has its measurements.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["ENABLED", "MIN_BYTES", "HUGE_PAGE", "thp_mode", "empty", "advise_huge"]

HUGE_PAGE = 2 << 20  # x86-64 and most aarch64 kernels
MADV_HUGEPAGE = 14  # <sys/mman.h>, Linux
# Smaller buffers hold at most one aligned huge page and usually live in a heap that is already faulted
# in: the syscall would cost more than it saves.
MIN_BYTES = 4 << 20


def thp_mode(path: Path = Path("/sys/kernel/mm/transparent_hugepage/enabled")) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    chosen = [w[1:-1] for w in text.split() if w.startswith("[") and w.endswith("]")]
    return chosen[0] if chosen else None


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _libc_madvise()
ENABLED: bool = (_MADVISE is not None and thp_mode() == "madvise"
                 and os.environ.get("TORCHCLIP_HUGEPAGES", "1") != "0")


def advise_huge(t: torch.Tensor) -> bool:
    """Ask for huge pages under the 2 MiB-aligned interior of ``t``'s memory; True if the kernel agreed.

    Advice only: pages already faulted in stay as they are, and a refusal (an old kernel, a seccomp
    filter) leaves the tensor exactly as usable as before.
    """
    if _MADVISE is None or t.device.type != "cpu":
        return False
    ptr, nbytes = t.data_ptr(), t.numel() * t.element_size()
    start = -(-ptr // HUGE_PAGE) * HUGE_PAGE
    end = (ptr + nbytes) // HUGE_PAGE * HUGE_PAGE
    return end > start and _MADVISE(start, end - start, MADV_HUGEPAGE) == 0


def empty(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """``torch.empty(rows, cols)`` with ``like``'s dtype and device, on huge pages where that pays: [rows, cols]."""
    t = torch.empty(rows, cols, dtype=like.dtype, device=like.device)
    if ENABLED and t.numel() * t.element_size() >= MIN_BYTES:
        advise_huge(t)
    return t
