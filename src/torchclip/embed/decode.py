"""Decoding and preprocessing images in worker processes, with an optional JPEG draft-mode fast path.

Workers return the *cropped uint8 pixels* (``[R, R, 3]``), not normalized float tensors: a quarter of the
bytes through the pipe, no torch in the workers, and the float conversion and normalization run batched in
the parent with exactly the arithmetic of ``EvalTransform`` (so features equal ``image_transform``'s).

Draft mode (``load_image``'s ``draft_size``): a JPEG can be decoded at 1/2, 1/4 or 1/8 scale inside the DCT, which skips most of the
decoding work for photos much larger than the model input. It changes pixels (the DCT downscale is not
Pillow's antialiased bicubic), so it is opt-in and keeps at least ``draft_factor`` x the model resolution
on the shorter side before the exact bicubic resize.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from ..transforms import OPENAI_MEAN, OPENAI_STD, ImageDecodeError, load_image, resize_center_crop
from .sources import Item

__all__ = ["open_image", "prepare_pixels", "prepare_batch", "normalize_batch", "ordered_map", "Prepared"]

T = TypeVar("T")
R = TypeVar("R")

# (uint8 [R, R, 3] pixels or None, error message or None) for one item
Prepared = tuple[np.ndarray | None, str | None]


# The library's decoder under the name the embed API has always used (draft mode, formats, pixel bound).
open_image = load_image


def prepare_pixels(img: Image.Image, image_size: int) -> np.ndarray:
    """OpenAI's eval geometry (shorter side -> R bicubic, centre crop R, then RGB): uint8 ``[R, R, 3]``.

    Bounded whatever the aspect ratio (see ``resize_center_crop``)."""
    img = resize_center_crop(img, image_size)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _prepare_one(item: Item, image_size: int, draft_factor: float | None) -> Prepared:
    try:
        source: str | bytes
        if item.data is not None:
            source = item.data
        elif item.path is not None:
            source = item.path
        else:
            return None, f"{item.id}: item has no image"
        img = open_image(source, name=item.id, draft_size=image_size if draft_factor else None,
                         draft_factor=draft_factor or 1.0)
        return prepare_pixels(img, image_size), None
    except ImageDecodeError as exc:
        return None, str(exc)
    except OSError as exc:  # missing/unreadable file: the item fails, the run goes on
        return None, f"cannot read {item.id}: {type(exc).__name__}: {exc}"


def prepare_batch(args: tuple[list[Item], int, float | None]) -> list[Prepared]:
    """Worker entry point: decode and crop a list of items (one task per list keeps IPC overhead low)."""
    items, image_size, draft_factor = args
    return [_prepare_one(item, image_size, draft_factor) for item in items]


def normalize_batch(pixels: np.ndarray, mean: tuple[float, ...] = OPENAI_MEAN,
                    std: tuple[float, ...] = OPENAI_STD) -> torch.Tensor:
    """uint8 ``[B, R, R, 3]`` -> float32 ``[B, 3, R, R]``: /255, minus mean, over std.

    The same float32 operations in the same order as ``EvalTransform``, so results are bit-identical to
    preprocessing each image with ``image_transform``.
    """
    t = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return t.sub_(m).div_(s).contiguous()


def _context() -> mp.context.BaseContext:
    # fork starts workers in milliseconds and the workers never touch torch, so the usual fork-after-OpenMP
    # hazard does not apply; elsewhere spawn (the worker function is importable and its args picklable).
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int, max_in_flight: int | None = None
                ) -> Iterator[R]:
    """``map(fn, tasks)`` over a process pool, in order, with at most ``max_in_flight`` tasks queued.

    ``multiprocessing.Pool.imap`` pulls its whole input as fast as it can, which for tar shards means
    reading every image into memory; the bounded window keeps memory flat whatever the collection size.
    ``workers=0`` runs in-process (debugging, tiny inputs). The pool is terminated if the consumer stops
    early (an exception, an interrupt, or simply not exhausting the iterator).
    """
    if workers <= 0:
        yield from map(fn, tasks)
        return
    window = max_in_flight or 4 * workers
    pool = _context().Pool(workers)
    try:
        pending: deque[Any] = deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()
