"""Batch parallelism for CPU inference: independent chunks of a batch on single-threaded workers.

torch runs every op of a forward on all its threads, each op split T ways and joined at its end. On the
2-core benchmark host that scales badly: one two-threaded ViT-B/32 forward took 76-85 ms per image where
one single-threaded forward took 117-122 (1.4-1.5x for twice the cores), while two single-threaded
forwards side by side, one per core, ran 1.18-1.28x the images per second of the two-threaded one
(benchmarks/results_encode.md, session 5). Images never interact in an image tower, so a batch can be cut
into chunks that run whole on their own thread: every op single-threaded, no join between ops.

``map_chunks`` does that on a small pool of workers, one per torch thread, each limited to one intra-op
thread for torch's OpenMP runtime and for MKL. Both limits are thread-local (``omp_set_num_threads`` sets the
calling thread's OpenMP ICV, ``mkl_set_num_threads_local`` MKL's per-thread count), so the caller's threads
and any other thread keep their settings. If either control cannot be found (another OpenMP runtime,
no MKL, a non-Linux build) or does not take effect, ``workers()`` is 1 and callers run the batch as before.

Set ``TORCHCLIP_CHUNK_THREADS=0`` (or ``ENABLED = False``, or ``chunk_threads(False)``) to switch it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["ENABLED", "workers", "map_chunks", "chunk_threads"]

ENABLED: bool = os.environ.get("TORCHCLIP_CHUNK_THREADS", "1") != "0"

T = TypeVar("T")

_lock = threading.Lock()
_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_controls: tuple[Callable[[int], object], ...] | None | bool = False  # False: not looked up yet


@contextlib.contextmanager
def chunk_threads(enabled: bool) -> Iterator[None]:
    """Within the block, set ``ENABLED`` (``False``: every batch runs as one multi-threaded forward)."""
    global ENABLED
    saved, ENABLED = ENABLED, enabled
    try:
        yield
    finally:
        ENABLED = saved


def _find_controls() -> tuple[Callable[..., object], ...] | None:
    """(set this thread's OpenMP thread count, set this thread's MKL thread count, read MKL's count for this
    thread), or None if unavailable."""
    if not sys.platform.startswith("linux") or not torch.backends.mkl.is_available():
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        omp = None
        for name in ("libgomp.so.1", "libiomp5.so"):  # the runtime torch's wheel ships and links
            if os.path.exists(os.path.join(lib, name)):
                omp = ctypes.CDLL(os.path.join(lib, name)).omp_set_num_threads
                break
        if omp is None:
            omp = ctypes.CDLL(None).omp_set_num_threads  # whatever runtime the process loaded globally
        torch_cpu = ctypes.CDLL(os.path.join(lib, "libtorch_cpu.so"))  # MKL is linked into it
        mkl_local, mkl_get = torch_cpu.mkl_set_num_threads_local_, torch_cpu.mkl_get_max_threads
    except (OSError, AttributeError):
        return None
    omp.argtypes, omp.restype = [ctypes.c_int], None
    mkl_local.argtypes, mkl_local.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int  # Fortran ABI
    mkl_get.argtypes, mkl_get.restype = [], ctypes.c_int
    return omp, lambda n: mkl_local(ctypes.byref(ctypes.c_int(n))), mkl_get


def _worker_init() -> None:
    torch.get_num_threads()  # torch's lazy per-thread set-up first: it would reset the counts set below
    omp, mkl, _ = _controls  # type: ignore[misc]
    omp(1)
    mkl(1)
    _local.worker = True


def _reset_after_fork() -> None:
    global _pool, _pool_size
    _pool, _pool_size = None, 0  # the parent's threads do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _get_pool(size: int) -> ThreadPoolExecutor | None:
    global _pool, _pool_size, _controls
    with _lock:
        if _controls is False:
            _controls = _find_controls()
        if _controls is None:
            return None
        if _pool is None or _pool_size != size:
            old = _pool
            _pool, _pool_size = ThreadPoolExecutor(size, "torchclip-chunk", initializer=_worker_init), size
            if old is not None:
                old.shutdown(wait=False)
            # The controls must reach torch's runtime and MKL: a worker that still sees several threads
            # switches this off for the process.
            mkl_get = _controls[2]
            seen = _pool.map(lambda _: (torch.get_num_threads(), mkl_get()), range(size))
            if any(counts != (1, 1) for counts in seen):
                _pool.shutdown(wait=False)
                _pool, _pool_size, _controls = None, 0, None
        return _pool


def workers(x: torch.Tensor) -> int:
    """How many single-threaded workers a batch on ``x``'s device may be cut across now; 1: run it whole.

    More than 1 only on CPU, with grad mode off, no autocast and no dispatch mode (those are thread-local:
    a worker would not see them), outside a worker, and with more than one torch thread.
    """
    if not ENABLED or x.device.type != "cpu" or getattr(_local, "worker", False):
        return 1
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return 1
    length = getattr(torch._C, "_len_torch_dispatch_stack", None)
    if length and length():
        return 1
    n = torch.get_num_threads()
    return n if n > 1 and _get_pool(n) is not None else 1


def map_chunks(fn: Callable[[torch.Tensor], T], chunks: Sequence[torch.Tensor]) -> list[T]:
    """``[fn(c) for c in chunks]``, the chunks spread over the workers, in order; the caller's inference
    mode carried over (grad mode is off: ``workers()`` said so). Exceptions reach the caller.
    """
    pool = _get_pool(torch.get_num_threads())
    if pool is None or len(chunks) < 2:
        return [fn(c) for c in chunks]
    inference = torch.is_inference_mode_enabled()

    def run(c: torch.Tensor) -> T:
        with torch.inference_mode(inference), torch.no_grad():
            return fn(c)

    return list(pool.map(run, chunks))
