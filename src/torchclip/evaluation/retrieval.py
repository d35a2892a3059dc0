"""Zero-shot image<->text retrieval: recall@K in both directions over a captioned dataset.

Each image may have several captions (COCO has five, Flickr30k five) and one caption text may describe
several images (the emoji benchmark's names are shared by every drawing style). Captions are deduplicated
into a text gallery and the positives kept as an ``[images, texts]`` matrix, so a duplicate string is one
gallery entry (not two entries competing for rank 1) and a hit on any positive counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..model import CLIP
from .datasets import ImageDataset
from .features import TextTokenizer, encode_texts, extract_image_features
from .metrics import retrieval_recall

__all__ = ["RetrievalResult", "caption_gallery", "retrieval_scores", "best_positive_ranks", "rank_summary",
           "evaluate_retrieval"]


@dataclass
class RetrievalResult:
    metrics: dict[str, float]  # image_retrieval_recall@K (text -> image), text_retrieval_recall@K
    similarity: torch.Tensor  # [images, texts] cosine similarities
    positives: torch.Tensor  # [images, texts] bool
    texts: list[str]


def caption_gallery(captions: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """Distinct caption strings (first-seen order) and the ``[images, texts]`` positive matrix."""
    index: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for i, caps in enumerate(captions):
        if not caps:
            raise ValueError(f"image {i} has no caption; retrieval needs at least one per image "
                             "(set a caption key, or drop uncaptioned images)")
        for c in caps:
            pairs.append((i, index.setdefault(c, len(index))))
    pos = torch.zeros(len(captions), len(index), dtype=torch.bool)
    rows, cols = zip(*pairs) if pairs else ((), ())
    pos[list(rows), list(cols)] = True
    return list(index), pos


def retrieval_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[images, texts]`` from unnormalized ``[N, E]`` and ``[M, E]`` features."""
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"embedding sizes differ: images {image_features.shape[1]}, texts {text_features.shape[1]}")
    return F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).t()


def best_positive_ranks(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """For each query row, the 1-based rank of its best positive: 1 + the negatives scoring at least as
    high (ties against the model, as in ``retrieval_recall``). [queries] int64.

    Recall@K is ``(ranks <= K).mean()``; the median rank stays informative where a small model's R@1 is
    near zero and R@K only says "not yet".
    """
    if similarity.shape != positives.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} differ")
    pos = positives.bool()
    if not bool(pos.any(dim=1).all()):
        raise ValueError("every query needs at least one positive")
    s = similarity.float()
    best = s.masked_fill(~pos, float("-inf")).max(dim=1, keepdim=True).values
    return 1 + ((s >= best) & ~pos).sum(dim=1)


def rank_summary(similarity: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
    """Median and mean rank of the best positive in both directions (images x texts similarity):
    ``text_retrieval_*`` ranks texts per image, ``image_retrieval_*`` images per text."""
    out = {}
    for name, (s, p) in {"text_retrieval": (similarity, positives),
                         "image_retrieval": (similarity.t(), positives.t())}.items():
        r = best_positive_ranks(s, p).double()
        out[f"{name}_median_rank"] = float(r.median())
        out[f"{name}_mean_rank"] = float(r.mean())
    return out


def evaluate_retrieval(model: CLIP, dataset: ImageDataset, tokenizer: TextTokenizer, *,
                       ks: Sequence[int] = (1, 5, 10), transform: Callable[[Any], torch.Tensor] | None = None,
                       image_features: torch.Tensor | None = None, text_template: str = "{}",
                       batch_size: int = 64, num_workers: int = 0,
                       cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
                       progress: bool = True, with_ranks: bool = False) -> RetrievalResult:
    """Recall@K for image->text and text->image retrieval over ``dataset.captions``.

    ``text_template`` wraps each caption (the paper: prefixing "a photo of" adds 1-2 points of R@1).
    ``with_ranks`` adds median / mean ranks (not CLIP_benchmark keys, so off by default).
    """
    dataset.require_nonempty()
    texts, positives = caption_gallery(dataset.captions)
    if image_features is None:
        image_features = extract_image_features(model, dataset, transform, batch_size=batch_size,
                                                num_workers=num_workers, cache_dir=cache_dir, progress=progress)
    prompts = [text_template.replace("{}", t) for t in texts]
    text_features = encode_texts(model, tokenizer, prompts, progress=progress)
    sim = retrieval_scores(image_features, text_features)
    metrics = retrieval_recall(sim, positives, ks)
    if with_ranks:
        metrics.update(rank_summary(sim, positives))
    return RetrievalResult(metrics, sim, positives, texts)
