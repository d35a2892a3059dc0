"""Zero-shot evaluation during training: class labels from each sample's metadata, prompts from templates.

For every label key (a ``.json`` field such as ``name`` or ``category``) the classes are the distinct values
in the evaluation set. The classifier is the paper's prompt ensemble (encode every template, L2-normalize,
average, re-normalize). Reported per key: ``acc1``, ``acc5``, ``acc10``, ``mean_per_class_recall`` and
text->image recall ``t2i_R@1/5/10`` (for each class prompt, is one of its images among the top K). With
classes = names, ``accK`` is "name retrieval over the val names" (image->text recall@K over the class
prompts is the same number, so it is not reported twice). A label key given ``class_prompts`` (class ->
its own prompts, as ``torchclip eval zeroshot --class-prompts`` reads them) uses those instead of templates.
A label key given a hubness bank (reference images, e.g. the training set's) has its scores corrected by
``hubness_penalty``, as ``torchclip eval zeroshot --hubness-bank`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data import load_eval_samples
from ..evaluation.metrics import classification_metrics, retrieval_recall, topk_accuracy
from ..evaluation.templates import ClassPrompts
from ..evaluation.zeroshot import build_prompt_classifier, hubness_correct, hubness_penalty
from ..model import CLIP

__all__ = ["EvalSet", "load_eval_sets", "class_embeddings", "zero_shot", "evaluate_sets", "check_class_prompts"]

ClassPromptsByKey = Mapping[str, Mapping[str, ClassPrompts]]  # label key -> class -> its prompts


@dataclass
class EvalSet:
    name: str
    pixels: torch.Tensor  # [N, 3, R, R]
    meta: list[dict[str, Any]]


def load_eval_sets(specs: Sequence[str], image_size: int, trim_margin: bool = False) -> list[EvalSet]:
    """``['in-style=a.tar::b.tar', ...]`` -> decoded sets (small: they are held in memory), each image cropped to
    its content first with ``trim_margin``."""
    out = []
    for spec in specs:
        name, source = spec.split("=", 1)
        pixels, meta = load_eval_samples(source, image_size, trim_margin=trim_margin)
        out.append(EvalSet(name, pixels, meta))
    return out


@torch.no_grad()
def class_embeddings(model: CLIP, tokenizer: Callable[..., torch.Tensor], classnames: Sequence[str],
                     templates: Sequence[str], device: torch.device) -> torch.Tensor:
    """[C, E] unit-norm class vectors: mean of the normalized prompt embeddings, re-normalized."""
    prompts = [t.format(c) for c in classnames for t in templates]
    ids = tokenizer(prompts, truncate=True).to(device)  # [C*T, L]
    emb = torch.cat([model.encode_text(ids[i:i + 512], normalize=True) for i in range(0, len(ids), 512)])
    emb = emb.float().view(len(classnames), len(templates), -1).mean(dim=1)  # [C, E]
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def image_embeddings(model: CLIP, pixels: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    parts = [model.encode_image(pixels[i:i + batch_size].to(device), normalize=True).float()
             for i in range(0, len(pixels), batch_size)]
    return torch.cat(parts)  # [N, E]


def zero_shot(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
              penalty: torch.Tensor | None = None) -> dict[str, float]:
    """Top-k accuracy (= image->prompt recall@k) and prompt->image recall for images vs class prompts; the
    scores ``hubness_correct``-ed when a ``penalty`` is given (a per-class shift: prompt->image ranks keep)."""
    scores = image_emb @ class_emb.T  # [N, C]
    if penalty is not None:
        scores = hubness_correct(scores, penalty)
    out = classification_metrics(scores, labels)
    out["acc10"] = topk_accuracy(scores, labels, (10,))[10]
    present = torch.zeros(class_emb.shape[0], dtype=torch.bool)
    present[labels] = True
    positives = F.one_hot(labels, class_emb.shape[0]).bool()[:, present]  # [N, C_present]
    rec = retrieval_recall(scores[:, present], positives, ks=(1, 5, 10))
    out.update({k.replace("image_retrieval_recall", "t2i_R"): v for k, v in rec.items()
                if k.startswith("image_retrieval_recall")})
    out["classes"] = float(class_emb.shape[0])
    return out


def _classes(s: EvalSet, key: str, exclude: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices of the samples labelled under ``key`` (not excluded) and the sorted distinct labels."""
    values = [m.get(key) for m in s.meta]
    keep = [i for i, v in enumerate(values) if isinstance(v, str) and v and v not in exclude]
    return keep, sorted({values[i] for i in keep})


def check_class_prompts(sets: Sequence[EvalSet], exclude: Sequence[str], class_prompts: ClassPromptsByKey) -> None:
    """Every class of every set has its prompts (a file may hold more classes than a set has): a missing
    class is an error before training, not at the first evaluation."""
    for key, prompts in class_prompts.items():
        for s in sets:
            missing = [c for c in _classes(s, key, exclude)[1] if c not in prompts]
            if missing:
                raise ValueError(f"eval.class_prompts for {key!r}: no prompts for class(es) {missing[:10]} "
                                 f"of eval set {s.name!r}")


def evaluate_sets(model: CLIP, tokenizer: Callable[..., torch.Tensor], sets: Sequence[EvalSet],
                  label_keys: Sequence[str], templates: Sequence[str], exclude: Sequence[str] = (),
                  batch_size: int = 256, class_prompts: ClassPromptsByKey | None = None,
                  hubness: Mapping[str, torch.Tensor] | None = None, hubness_k: int = 10) -> dict[str, float]:
    """``{'<set>/<key>/<metric>': value}`` for every set and label key; the model is put back in its mode.
    ``hubness``: label key -> pixels of its bank images ([M, 3, R, R]), embedded once per call."""
    if class_prompts:
        check_class_prompts(sets, exclude, class_prompts)  # before any image is embedded
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: dict[str, float] = {}
    try:
        banks = {key: image_embeddings(model, pixels, device, batch_size) for key, pixels in (hubness or {}).items()}
        for s in sets:
            img = image_embeddings(model, s.pixels, device, batch_size)
            for key in label_keys:
                keep, classes = _classes(s, key, exclude)
                if not keep:
                    continue
                index = {c: j for j, c in enumerate(classes)}
                labels = torch.tensor([index[s.meta[i][key]] for i in keep])
                if class_prompts and key in class_prompts:
                    cls = build_prompt_classifier(model, tokenizer, [class_prompts[key][c] for c in classes],
                                                  batch_size=512, cache_dir=False).t().to(device)  # [C, E]
                else:
                    cls = class_embeddings(model, tokenizer, classes, templates, device)
                penalty = hubness_penalty(cls.t(), banks[key], hubness_k) if key in banks else None
                for metric, v in zero_shot(img[keep], cls, labels, penalty).items():
                    results[f"{s.name}/{key}/{metric}"] = float(v)
    finally:
        model.train(was_training)
    return results
