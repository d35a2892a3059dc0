"""Zero-shot classification: class names x prompt templates (or each class's own prompts) -> one unit
vector per class.

The classifier follows the paper exactly (reference §8): every prompt embedding is L2-normalized, the
prompts of a class (all templates, and all synonyms when a class has several names) are averaged, and the
mean is re-normalized. Normalizing before averaging matters: otherwise prompts with larger raw norms would
dominate the ensemble. Logits are ``100 * normalize(image) @ W``: the paper's fixed scale, not the learned
one, which changes no ranking but keeps probabilities comparable across models.

Classifiers are cached on disk under a key built from the model's weights and the *token ids* of every
prompt (not the prompt strings), so a different vocabulary or context length cannot hit a stale entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..model import CLIP
from .datasets import ImageDataset
from .features import (
    TextTokenizer,
    cache_root,
    encode_texts,
    extract_image_features,
    model_fingerprint,
    tokenize_for,
)
from .metrics import classification_metrics, confusion_matrix
from .templates import ClassName, ClassPrompts, fill, prompt_groups, resolve_templates

__all__ = ["LOGIT_SCALE", "build_classifier", "build_prompt_classifier", "zeroshot_logits", "hubness_penalty",
           "ZeroShotResult", "evaluate_zeroshot", "align_classnames"]

LOGIT_SCALE = 100.0


def _synonyms(name: ClassName, i: int) -> list[str]:
    names = [name] if isinstance(name, str) else list(name)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"class {i}: empty or non-string class name {name!r}")
    return names


def build_classifier(model: CLIP, tokenizer: TextTokenizer, classnames: Sequence[ClassName],
                     templates: str | Sequence[str] = "photo", *, batch_size: int = 256,
                     cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
                     progress: bool = False) -> torch.Tensor:
    """The zero-shot weights ``[E, C]``: column c is the renormalized mean of class c's normalized prompt
    embeddings. ``templates`` is a set name, a file or a list (see ``resolve_templates``)."""
    templates = resolve_templates(templates)
    if isinstance(classnames, str) or not len(classnames):
        raise ValueError("classnames must be a non-empty list of names (or lists of synonyms)")
    groups = [[[fill(t, synonym) for synonym in _synonyms(name, c) for t in templates]]
              for c, name in enumerate(classnames)]
    return _classifier(model, tokenizer, groups, batch_size, cache_dir, progress, len(templates))


def build_prompt_classifier(model: CLIP, tokenizer: TextTokenizer, class_prompts: Sequence[ClassPrompts], *,
                            batch_size: int = 256, cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
                            progress: bool = False) -> torch.Tensor:
    """The zero-shot weights ``[E, C]`` from each class's own prompts (CuPL, hand-written descriptions):
    entry c is a list of sentences, or a list of groups of them. Column c is the renormalized mean of its
    groups' vectors, each the renormalized mean of the group's normalized prompt embeddings; one flat list
    is one group, which is exactly the template classifier's ensemble."""
    if isinstance(class_prompts, (str, Mapping)) or not len(class_prompts):
        raise ValueError("class_prompts must be a non-empty list, one entry per class")
    groups = [prompt_groups(p, f"class {c}") for c, p in enumerate(class_prompts)]
    return _classifier(model, tokenizer, groups, batch_size, cache_dir, progress, 0)


def _classifier(model: CLIP, tokenizer: TextTokenizer, groups: list[list[list[str]]], batch_size: int,
                cache_dir: str | os.PathLike[str] | None | Literal[False], progress: bool,
                templates: int) -> torch.Tensor:
    prompts = [t for cls in groups for g in cls for t in g]
    group_of = torch.tensor([j for j, g in enumerate(g for cls in groups for g in cls) for _ in g])  # [P]
    class_of = torch.tensor([c for c, cls in enumerate(groups) for _ in cls])  # [G]
    path = None
    if cache_dir is not False:
        ids = tokenize_for(model, tokenizer, prompts)  # [P, L]
        h = hashlib.sha256(model_fingerprint(model).encode())
        h.update(ids.to(torch.int64).contiguous().numpy().tobytes())
        h.update(group_of.numpy().tobytes())
        h.update(b"classes" + class_of.numpy().tobytes())
        path = cache_root(cache_dir) / "classifiers" / f"{h.hexdigest()[:32]}.safetensors"
        if path.is_file():
            return load_file(path)["weights"]
    emb = F.normalize(encode_texts(model, tokenizer, prompts, batch_size=batch_size, progress=progress), dim=-1)
    g = F.normalize(torch.zeros(len(class_of), emb.shape[1]).index_add_(0, group_of, emb), dim=-1)  # [G, E]
    # with one group per class this is the paper's ensemble: normalize(mean) of the normalized prompts
    weights = F.normalize(torch.zeros(len(groups), emb.shape[1]).index_add_(0, class_of, g), dim=-1).t()
    weights = weights.contiguous()  # [E, C]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"weights": weights}, str(tmp), metadata={"classes": str(len(groups)),
                                                            "templates": str(templates)})
        os.replace(tmp, path)
    return weights


def _check_dims(image_features: torch.Tensor, classifier: torch.Tensor, what: str = "image features") -> None:
    if image_features.dim() != 2 or classifier.dim() != 2:
        raise ValueError(f"{what} must be [N, E] and the classifier [E, C]")
    if image_features.shape[1] != classifier.shape[0]:
        raise ValueError(
            f"embedding sizes differ: {what} have {image_features.shape[1]} dims, the classifier "
            f"{classifier.shape[0]}. Were the features taken before the projection (kind='pre_projection'), "
            "or from another model?")


def hubness_penalty(classifier: torch.Tensor, bank_features: torch.Tensor, k: int = 10, *,
                    chunk: int = 16384) -> torch.Tensor:
    """``[C]``: each class vector's mean cosine with its ``k`` nearest images in a reference bank ([M, E],
    e.g. the model's training images, never the test images): the class term of CSLS (Conneau et al.,
    "Word Translation Without Parallel Data", 2018). A class that sits close to every image (a hub) gets a
    large penalty, so it stops winning images that match a more specific class better. The bank is read
    ``chunk`` rows at a time, so memory stays ``(chunk + k) x C`` however large the bank."""
    _check_dims(bank_features, classifier, "bank features")
    if not 1 <= k <= bank_features.shape[0]:
        raise ValueError(f"k={k} nearest bank images asked of a bank of {bank_features.shape[0]}")
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be at least 1")
    w = classifier.float()
    best = None  # [<=k, C]: the k largest cosines so far, per class
    for i in range(0, bank_features.shape[0], chunk):
        cos = F.normalize(bank_features[i:i + chunk].float(), dim=-1) @ w.to(bank_features.device)  # [chunk, C]
        both = cos if best is None else torch.cat([best, cos])
        best = both.topk(min(k, both.shape[0]), dim=0).values
    return best.mean(dim=0).to(classifier.device)  # [C]


def hubness_correct(cos: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``cos - penalty / 2`` for [N, C] cosines and a [C] ``hubness_penalty``: CSLS halved, less its image
    term, which is the same for every class of an image and so changes no prediction."""
    if penalty.shape != (cos.shape[1],):
        raise ValueError(f"penalty must be one value per class ({cos.shape[1]}), got {tuple(penalty.shape)}")
    return cos - penalty.to(cos) / 2


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor, scale: float = LOGIT_SCALE,
                    penalty: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * normalize(image_features) @ classifier``: [N, E] x [E, C] -> [N, C], each cosine
    ``hubness_correct``-ed first when a ``penalty`` ([C], from ``hubness_penalty``) is given."""
    _check_dims(image_features, classifier)
    cos = F.normalize(image_features.float(), dim=-1) @ classifier.float()  # [N, C]
    return scale * (cos if penalty is None else hubness_correct(cos, penalty))


def align_classnames(dataset_classes: Sequence[str], classnames: Sequence[ClassName] | Mapping[str, ClassName] | None,
                     rename: Callable[[str], str] | None = None) -> list[ClassName]:
    """The prompt name(s) of each dataset class, in the dataset's label order.

    ``classnames`` may be a list aligned with the labels, or a mapping from the dataset's class names to
    prompt names; a mapping that misses a class or names a class the dataset does not have is an error
    (a typo there would otherwise silently drop or shift a class). ``rename`` edits default names.
    """
    if classnames is None:
        return [rename(c) if rename else c for c in dataset_classes]
    if isinstance(classnames, Mapping):
        unknown = sorted(set(classnames) - set(dataset_classes))
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown[:10]}; the dataset's classes: {list(dataset_classes)[:20]}")
        missing = [c for c in dataset_classes if c not in classnames]
        if missing:
            raise ValueError(f"no prompt name for class(es) {missing[:10]}")
        return [classnames[c] for c in dataset_classes]
    if len(classnames) != len(dataset_classes):
        raise ValueError(f"{len(classnames)} class names for a dataset with {len(dataset_classes)} classes")
    return list(classnames)


@dataclass
class ZeroShotResult:
    """Metrics plus what they were computed from, so plots and reports need no second pass."""

    metrics: dict[str, float]
    logits: torch.Tensor  # [N, C]
    labels: np.ndarray  # [N]
    classnames: list[str]
    templates: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(dim=1).numpy()

    def confusion(self) -> np.ndarray:
        """``[true, predicted]`` counts."""
        return confusion_matrix(self.predictions, self.labels, len(self.classnames))


def evaluate_zeroshot(model: CLIP, dataset: ImageDataset, tokenizer: TextTokenizer,
                      templates: str | Sequence[str] = "photo",
                      classnames: Sequence[ClassName] | Mapping[str, ClassName] | None = None, *,
                      class_prompts: Mapping[str, ClassPrompts] | None = None,
                      transform: Callable[[Any], torch.Tensor] | None = None,
                      image_features: torch.Tensor | None = None, batch_size: int = 64, num_workers: int = 0,
                      cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
                      progress: bool = True, hubness_bank: torch.Tensor | None = None,
                      hubness_k: int = 10) -> ZeroShotResult:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall of ``model`` on a labelled dataset.

    ``classnames`` defaults to the dataset's own; ``image_features`` ([N, E], e.g. shared between template
    sets) skips extraction. ``class_prompts`` (dataset class -> its own prompts, see
    ``build_prompt_classifier``) replaces names and templates; it must name every class and no other.
    ``hubness_bank`` ([M, E] features of reference images, e.g. the training set's) corrects every class
    score by ``hubness_penalty`` over its ``hubness_k`` nearest bank images.
    """
    dataset.require_labels()
    if class_prompts is not None:
        if classnames is not None:
            raise ValueError("class_prompts replaces classnames and templates: pass one or the other")
        if not isinstance(class_prompts, Mapping):
            raise ValueError("class_prompts must map each of the dataset's class names to its prompts")
        unknown = sorted(set(class_prompts) - set(dataset.classnames))
        missing = [c for c in dataset.classnames if c not in class_prompts]
        if unknown or missing:
            raise ValueError(f"class prompts must name every class of the dataset and no other: missing "
                             f"{missing[:10]}, unknown {unknown[:10]}")
    names = None if class_prompts is not None else align_classnames(dataset.classnames, classnames)
    if image_features is None:
        image_features = extract_image_features(model, dataset, transform, batch_size=batch_size,
                                                num_workers=num_workers, cache_dir=cache_dir, progress=progress)
    if image_features.shape[0] != len(dataset):
        raise ValueError(f"{image_features.shape[0]} feature rows for {len(dataset)} images")
    if class_prompts is not None:
        templates = ()
        weights = build_prompt_classifier(model, tokenizer, [class_prompts[c] for c in dataset.classnames],
                                          cache_dir=cache_dir, progress=progress)
    else:
        templates = resolve_templates(templates)
        weights = build_classifier(model, tokenizer, names, templates, cache_dir=cache_dir, progress=progress)
    penalty = None if hubness_bank is None else hubness_penalty(weights, hubness_bank, hubness_k)
    logits = zeroshot_logits(image_features, weights, penalty=penalty)
    metrics = classification_metrics(logits, dataset.labels)
    extra = {} if penalty is None else {"hubness_penalty": penalty, "hubness_k": hubness_k}
    return ZeroShotResult(metrics, logits, dataset.labels.copy(), list(dataset.classnames), templates, extra)
