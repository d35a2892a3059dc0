"""The embedding loop: stream items, decode in workers, encode in batches, commit resumable parts.

Memory stays flat whatever the collection size: items are read lazily, at most a few tasks per worker are
in flight, and rows go to disk every ``part_size`` rows (or every ``commit_seconds``). Decoding overlaps
with encoding because the worker pool keeps decoding while the parent runs the model.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..model import CLIP
from ..tokenizer import Tokenizer
from .decode import normalize_batch, ordered_map, prepare_batch, prepare_pixels
from .modelspec import ModelSpec
from .sources import Item, Source
from .store import EmbeddingWriter, ResumeError, merge_ranks, rank_dir, rank_progress, ranks_dir

__all__ = ["EmbedResult", "embed_source", "encode_images", "encode_texts", "default_workers", "dist_from_env"]


@dataclass
class EmbedResult:
    """What a run did: where the output is, rows written, items that failed, and how long it took.

    In a distributed run ``out`` is the merged store when this rank merged it (``merged``), else this rank's
    own output (the last rank to finish merges: ``pending`` says how the others stand).
    """

    out: Path
    rows: int
    errors: int
    resumed_from: int
    seconds: float
    new_items: int
    rank: int = 0
    world_size: int = 1
    merged: bool = False
    pending: str = ""

    @property
    def items_per_second(self) -> float:
        return self.new_items / self.seconds if self.seconds > 0 else float("nan")


def default_workers() -> int:
    """Decoding processes: one per core beyond the one running the model, at least one, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _chunks(it: Iterable[Item], n: int) -> Iterator[list[Item]]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


@torch.inference_mode()
def encode_images(model: CLIP, images: Sequence[Image.Image], *, normalize: bool = True,
                  batch_size: int = 64) -> np.ndarray:
    """Embed decoded PIL images with the exact eval preprocessing: float32 ``[N, E]``."""
    device = next(model.parameters()).device
    size = model.config.vision.image_size
    out: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        pixels = np.stack([prepare_pixels(img, size) for img in images[i : i + batch_size]])
        feats = model.encode_image(normalize_batch(pixels).to(device), normalize=normalize)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


@torch.inference_mode()
def encode_texts(model: CLIP, tokenizer: Tokenizer, texts: Sequence[str], *, normalize: bool = True,
                 batch_size: int = 256) -> np.ndarray:
    """Embed texts (cut to the context length, end-of-text kept): float32 ``[N, E]``."""
    device = next(model.parameters()).device
    ctx = model.config.text.context_length
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[i : i + batch_size]), context_length=ctx, truncate=True, num_workers=1)
        out.append(model.encode_text(ids.to(device), normalize=normalize).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


def dist_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's (or any launcher's) ``RANK``/``WORLD_SIZE``; (0, 1) without."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in WORLD_SIZE={world}")
    return rank, world


def _record(item: Item, keep_order: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": item.id, **item.locator}
    if item.text is not None:
        rec["text"] = item.text
    if keep_order:
        rec["_order"] = list(item.order)
    return rec


def _signature(source: Source, model: CLIP, spec: ModelSpec | None, draft_factor: float | None,
               normalize: bool, dtype: str, fmt: str) -> dict[str, Any]:
    return {
        "source": source.describe(),
        "model": spec.to_dict() if spec else {"config": model.config.to_dict()},
        "draft_factor": draft_factor if source.modality == "image" else None,
        "normalize": normalize,
        "dtype": dtype,
        "format": fmt,
    }


def _progress(enabled: bool, total: int | None, initial: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True,
                smoothing=0.1, desc="embed")


def embed_source(
    source: Source,
    model: CLIP,
    out: str | os.PathLike[str],
    *,
    tokenizer: Tokenizer | None = None,
    model_spec: ModelSpec | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    draft_factor: float | None = None,
    normalize: bool = True,
    dtype: str = "float32",
    fmt: str = "npy",
    ids_format: str = "jsonl",
    part_size: int = 8192,
    commit_seconds: float = 60.0,
    overwrite: bool = False,
    progress: bool = True,
    total: int | None = None,
    on_commit: Callable[[EmbeddingWriter], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EmbedResult:
    """Embed every item of ``source`` into ``out`` (a folder, or a ``.safetensors`` file).

    An unfinished run at ``out`` with the same settings is resumed; ``on_commit`` is called after each
    committed part (progress reporting, and the interruption tests). ``draft_factor`` (images only): enable
    JPEG draft decoding keeping at least that multiple of the model resolution (None: exact decoding).
    Undecodable or missing images are skipped and listed in the errors file, never fatal.

    ``world_size > 1``: this process is rank ``rank`` of a distributed run (torchrun: :func:`dist_from_env`).
    It embeds its share of the source into its own resumable output under ``out``; the last rank to finish
    merges all of them into one store at ``out``, equal to what one process writes. No process group is
    needed, only a folder every rank can write (a shared filesystem across machines).
    """
    if source.modality == "text" and tokenizer is None:
        raise ValueError("embedding texts needs a tokenizer")
    if world_size > 1:
        final = EmbeddingWriter.finished_at(out, fmt)
        if final and not overwrite:
            raise ResumeError(f"{out} already holds finished embeddings; pass overwrite to replace them")
        part = source.for_rank(rank, world_size)
        target = rank_dir(out, fmt, rank, world_size)
        result = _embed(part, model, target, tokenizer, model_spec, batch_size, workers, draft_factor, normalize,
                        dtype, "npy", "jsonl", part_size, commit_seconds, overwrite, progress, total, on_commit,
                        keep_order=True)
        result.rank, result.world_size = rank, world_size
        meta = _meta(source, model, model_spec, normalize, draft_factor)
        try:
            merged = merge_ranks(out, world_size=world_size, fmt=fmt, dtype=dtype, ids_format=ids_format, meta=meta)
        except OSError:
            if not EmbeddingWriter.finished_at(out, fmt):  # another rank merged and removed the rank outputs
                raise
            merged = None
        if merged is not None:
            result.out, result.merged = merged, True
        else:
            result.pending = rank_progress(ranks_dir(out, fmt)) if ranks_dir(out, fmt).exists() else "merged"
        return result
    return _embed(source, model, out, tokenizer, model_spec, batch_size, workers, draft_factor, normalize, dtype,
                  fmt, ids_format, part_size, commit_seconds, overwrite, progress, total, on_commit)


def _meta(source: Source, model: CLIP, model_spec: ModelSpec | None, normalize: bool,
          draft_factor: float | None) -> dict[str, Any]:
    return {
        "source": source.describe(),
        "modality": source.modality,
        "model": model_spec.to_dict() if model_spec else None,
        "model_config": model.config.to_dict(),
        "normalized": normalize,
        "draft_factor": draft_factor if source.modality == "image" else None,
    }


def _embed(source: Source, model: CLIP, out: str | os.PathLike[str], tokenizer: Tokenizer | None,
           model_spec: ModelSpec | None, batch_size: int, workers: int | None, draft_factor: float | None,
           normalize: bool, dtype: str, fmt: str, ids_format: str, part_size: int, commit_seconds: float,
           overwrite: bool, progress: bool, total: int | None,
           on_commit: Callable[[EmbeddingWriter], None] | None, keep_order: bool = False) -> EmbedResult:
    model.eval()
    workers = default_workers() if workers is None else workers
    writer = EmbeddingWriter(
        out, dim=model.config.embed_dim, fmt=fmt, dtype=dtype, ids_format=ids_format, part_size=part_size,
        commit_seconds=commit_seconds, overwrite=overwrite,
        signature=_signature(source, model, model_spec, draft_factor, normalize, dtype, fmt),
    )
    skip = writer.consumed
    start = time.perf_counter()
    bar = _progress(progress, total, skip, "img" if source.modality == "image" else "text")
    try:
        items = _check_resume_point(source, skip, writer.last_id, writer.last_order)
        if source.modality == "image":
            steps = _image_steps(items, model, batch_size, workers, draft_factor, normalize, keep_order)
        else:
            steps = _text_steps(items, model, tokenizer, batch_size, normalize, keep_order)  # type: ignore[arg-type]
        new_items = 0
        for vectors, records, errors, consumed, last_id, last_order in steps:
            committed = writer.add(vectors, records, errors, consumed, last_id, last_order)
            new_items += consumed
            bar.update(consumed)
            if committed and on_commit is not None:
                on_commit(writer)
    finally:
        bar.close()
    path = writer.finalize(_meta(source, model, model_spec, normalize, draft_factor))
    return EmbedResult(path, writer.rows, int(writer.state["errors"]), skip, time.perf_counter() - start,
                       new_items)


def _check_resume_point(source: Source, skip: int, last_id: str | None,
                        last_order: tuple[int, int] | None = None) -> Iterator[Item]:
    """Items after the committed ones. When resuming, the last committed item must still be where it was:
    a source that changed (files added or removed) would otherwise shift every later row silently. Tar
    shards resume at the recorded item's shard, without reading the shards before it."""
    if skip == 0 or last_id is None:
        return source.iter(skip)
    it = source.iter(skip - 1) if last_order is None or not source.by_shard else source.iter(after=last_order)
    try:
        previous = next(it)
    except StopIteration:
        raise ResumeError(f"cannot resume: the input now holds fewer than {skip} items") from None
    if previous.id != last_id or (last_order is not None and source.by_shard and previous.order != last_order):
        raise ResumeError(
            f"cannot resume: item {skip} of the input is now {previous.id!r}, the run stopped after {last_id!r}; "
            "the input changed since the interrupted run (use overwrite to start again)"
        )
    return it


Step = tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]], int, "str | None", "tuple[int, int] | None"]


@torch.inference_mode()
def _image_steps(items: Iterator[Item], model: CLIP, batch_size: int, workers: int,
                 draft_factor: float | None, normalize: bool, keep_order: bool = False) -> Iterator[Step]:
    device = next(model.parameters()).device
    size = model.config.vision.image_size
    chunk = max(1, min(16, batch_size // max(1, workers)))

    groups: deque[list[Item]] = deque()

    def tasks() -> Iterator[tuple[list[Item], int, float | None]]:
        # ordered_map pulls a task before it yields that task's result, so ``groups`` always holds the
        # items of the result being handled (at the left) and of the tasks still in flight.
        for group in _chunks(items, chunk):
            groups.append(group)
            yield group, size, draft_factor

    pixels: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    consumed = 0
    last_id: str | None = None
    last_order: tuple[int, int] | None = None

    def flush() -> Step:
        if pixels:
            x = normalize_batch(np.stack(pixels)).to(device)
            vec = model.encode_image(x, normalize=normalize).float().cpu().numpy()
        else:
            vec = np.zeros((0, model.config.embed_dim), np.float32)
        return vec, list(records), list(errors), consumed, last_id, last_order

    window = 2 * max(1, workers) + 2
    for group_result in ordered_map(prepare_batch, tasks(), workers, max_in_flight=window):
        group = groups.popleft()
        for item, (pix, err) in zip(group, group_result):
            consumed += 1
            last_id, last_order = item.id, item.order
            if item.error is not None:
                pix, err = None, item.error
            if pix is None:
                errors.append({**_record(item, keep_order), "error": err})
            else:
                pixels.append(pix)
                records.append(_record(item, keep_order))
            if len(pixels) >= batch_size or consumed >= 4 * batch_size:
                yield flush()
                pixels.clear()
                records.clear()
                errors.clear()
                consumed = 0
    if consumed:
        yield flush()


@torch.inference_mode()
def _text_steps(items: Iterator[Item], model: CLIP, tokenizer: Tokenizer, batch_size: int,
                normalize: bool, keep_order: bool = False) -> Iterator[Step]:
    device = next(model.parameters()).device
    ctx = model.config.text.context_length
    for group in _chunks(items, batch_size):
        ids = tokenizer([it.text or "" for it in group], context_length=ctx, truncate=True, num_workers=1)
        vec = model.encode_text(ids.to(device), normalize=normalize).float().cpu().numpy()
        yield vec, [_record(it, keep_order) for it in group], [], len(group), group[-1].id, group[-1].order
