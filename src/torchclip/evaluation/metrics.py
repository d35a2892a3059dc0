"""Classification and retrieval metrics, defined as CLIP_benchmark defines them (reference §8).

Every function takes plain tensors so that the same code scores zero-shot logits, linear-probe
probabilities and similarity matrices. Ties are resolved *against* the model: a random or collapsed model
whose scores are all equal gets chance-level numbers, never perfect ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "topk_accuracy",
    "confusion_matrix",
    "per_class_recall",
    "mean_per_class_recall",
    "classification_metrics",
    "retrieval_recall",
    "positives_from_index",
]


def _as_tensor(x: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _check_scores(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [samples, classes], got shape {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {scores.shape[0]} samples")
    if scores.shape[0] == 0:
        raise ValueError("no samples to score (empty dataset?)")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores hold NaN or inf: the model's features are not finite")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{int(labels.min())}, {int(labels.max())}]")


def _label_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each sample, how many *other* classes score at least as high as the true one: [N].

    ``rank < k`` is "the label is in the top k" with ties counted against the model.
    """
    true = scores.gather(1, labels[:, None])  # [N, 1]
    return (scores >= true).sum(dim=1) - 1


def topk_accuracy(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int],
                  ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of samples whose label is among the ``k`` highest scores, for each k.

    NaN when k exceeds the number of classes (CLIP_benchmark's ``acc5`` below five classes): a top-5
    accuracy of 1.0 on a 3-class problem would be a meaningless perfect score.
    """
    scores, labels = _as_tensor(scores).float(), _as_tensor(labels).long()
    _check_scores(scores, labels)
    ranks = _label_ranks(scores, labels)
    # count / n in float64, as CLIP_benchmark computes it: a float32 mean would differ in the 8th digit
    n = scores.shape[0]
    return {k: (int((ranks < k).sum()) / n if k <= scores.shape[1] else math.nan) for k in ks}


def confusion_matrix(pred: torch.Tensor | np.ndarray | Sequence[int],
                     labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts, int64 ``[num_classes, num_classes]``."""
    p = np.asarray(_as_tensor(pred).cpu(), dtype=np.int64).ravel()
    t = np.asarray(_as_tensor(labels).cpu(), dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions for {t.size} labels")
    for name, a in (("predictions", p), ("labels", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix: [C], NaN for classes with no samples."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_per_class_recall(pred: torch.Tensor | np.ndarray | Sequence[int],
                          labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int) -> float:
    """Balanced accuracy: the mean over classes *present in labels* of correct / count.

    Classes absent from the evaluation set are skipped rather than counted as 0, so a subset of a dataset
    is scored on its own classes (CLIP_benchmark does the same).
    """
    recalls = per_class_recall(confusion_matrix(pred, labels, num_classes))
    present = ~np.isnan(recalls)
    if not present.any():
        raise ValueError("no samples to score (empty dataset?)")
    return float(recalls[present].mean())


def classification_metrics(scores: torch.Tensor | np.ndarray,
                           labels: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` with CLIP_benchmark's key names."""
    scores, labels = _as_tensor(scores).float(), _as_tensor(labels).long()
    acc = topk_accuracy(scores, labels, (1, 5))
    pred = scores.argmax(dim=1)
    return {
        "acc1": acc[1],
        "acc5": acc[5],
        "mean_per_class_recall": mean_per_class_recall(pred, labels, scores.shape[1]),
    }


def positives_from_index(text_to_image: Sequence[int] | np.ndarray | torch.Tensor,
                         num_images: int) -> torch.Tensor:
    """The ``[images, texts]`` bool matrix for captions that each belong to one image.

    ``text_to_image[j]`` is the image caption j describes; an image with five captions appears five times.
    """
    idx = _as_tensor(text_to_image).long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_images):
        raise ValueError(f"caption image indices outside [0, {num_images})")
    pos = torch.zeros(num_images, idx.numel(), dtype=torch.bool)
    pos[idx, torch.arange(idx.numel())] = True
    return pos


def _recall_at(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int], chunk: int) -> dict[int, float]:
    """Queries are rows. A query hits at K when fewer than K negatives score >= its best positive."""
    hits = {k: 0 for k in ks}
    for start in range(0, scores.shape[0], chunk):
        s = scores[start:start + chunk].float()  # [q, candidates]
        pos = positives[start:start + chunk]
        best = s.masked_fill(~pos, -math.inf).max(dim=1, keepdim=True).values  # [q, 1]
        n_above = ((s >= best) & ~pos).sum(dim=1)  # negatives at or above the best positive
        for k in ks:
            hits[k] += int((n_above < k).sum())
    return {k: hits[k] / scores.shape[0] for k in ks}


def retrieval_recall(similarity: torch.Tensor | np.ndarray, positives: torch.Tensor | np.ndarray,
                     ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """Recall@K in both directions from an ``[images, texts]`` similarity and positive-pair matrix.

    ``text_retrieval_recall@K`` ranks texts for each image (image -> text); ``image_retrieval_recall@K``
    ranks images for each caption (text -> image). A query counts once if *any* of its positives is in the
    top K, so several captions per image (COCO's five) and several images per text are both handled.
    """
    sim, pos = _as_tensor(similarity), _as_tensor(positives).bool()
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"recall K must be >= 1, got {ks}")
    if sim.dim() != 2 or sim.shape != pos.shape:
        raise ValueError(f"similarity {tuple(sim.shape)} and positives {tuple(pos.shape)} must be equal 2-D shapes")
    if 0 in sim.shape:
        raise ValueError(f"nothing to retrieve: {sim.shape[0]} images, {sim.shape[1]} texts")
    if not bool(torch.isfinite(sim).all()):
        raise ValueError("similarities hold NaN or inf: the model's features are not finite")
    for axis, what in ((1, "image"), (0, "text")):
        lonely = ~pos.any(dim=axis)
        if bool(lonely.any()):
            raise ValueError(f"{int(lonely.sum())} {what}(s) have no positive pair, e.g. index {int(lonely.nonzero()[0])}")
    t_hits = _recall_at(sim, pos, ks, chunk)
    i_hits = _recall_at(sim.t(), pos.t(), ks, chunk)
    out = {f"image_retrieval_recall@{k}": i_hits[k] for k in ks}
    out.update({f"text_retrieval_recall@{k}": t_hits[k] for k in ks})
    return out
