"""Zero-shot labels for search results and uploads: class vectors from prompts, then cosine ranking.

A class vector is the paper's prompt ensemble: embed every template filled with the class name, normalize
each, average, renormalize. When the evaluation package's zero-shot classifier is available its class
weights are used (one definition of "zero-shot" in the project); otherwise the same recipe runs here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..model import CLIP
from ..tokenizer import Tokenizer

__all__ = ["DEFAULT_TEMPLATES", "ZeroShotLabels", "load_label_names", "resolve_templates", "class_vectors"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}")


_LIST_SUFFIXES = (".txt", ".json", ".csv", ".tsv", ".list")  # a label spec ending so names a file


def load_label_names(spec: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Class names from a list, a text file (one per line, ``#`` comments), a JSON list/``{"classes": ...}``
    file, or a comma-separated string. A string that looks like a path (a ``/``, or a file suffix, and no
    comma) but names no file is an error, not a one-class label set."""
    if not isinstance(spec, (str, os.PathLike)):
        names = [str(s) for s in spec]
    else:
        p = Path(spec)
        if p.is_file():
            text = p.read_text(encoding="utf-8")
            if p.suffix.lower() == ".json":
                doc = json.loads(text)
                doc = doc.get("classes", doc.get("labels")) if isinstance(doc, dict) else doc
                if not isinstance(doc, list):
                    raise ValueError(f"{p}: expected a JSON list of class names or {{'classes': [...]}}")
                names = [n if isinstance(n, str) else str(n[0]) for n in doc]
            else:
                names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        elif "," not in str(spec) and ("/" in str(spec) or os.sep in str(spec) or p.suffix.lower() in _LIST_SUFFIXES):
            raise FileNotFoundError(f"labels file {spec} does not exist (give a file, or names separated by "
                                    "commas: 'cat,dog')")
        else:
            names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise ValueError(f"no class names in {spec!r}")
    return names


def resolve_templates(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates from the evaluation package's named sets/files when present, else a file (one per line),
    a single template with ``{}``, or a list; None gives ``DEFAULT_TEMPLATES``."""
    if spec is None:
        return DEFAULT_TEMPLATES
    try:
        from ..evaluation.templates import resolve_templates as _resolve
    except ImportError:
        _resolve = None
    if _resolve is not None:
        return tuple(_resolve(spec))
    if isinstance(spec, str):
        p = Path(spec)
        if p.is_file():
            out = tuple(ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip())
        elif "{}" in spec:
            out = (spec,)
        else:
            raise ValueError(f"templates {spec!r}: not a file and holds no '{{}}'")
    else:
        out = tuple(spec)
    if not out or any("{}" not in t for t in out):
        raise ValueError(f"every template needs a '{{}}' for the class name: {out}")
    return out


def _zeroshot_weights(model: CLIP, tokenizer: Tokenizer, names: Sequence[str],
                      templates: Sequence[str]) -> np.ndarray | None:
    """The evaluation package's zero-shot classifier (``[C, E]``), when that package is present."""
    try:
        from ..evaluation.zeroshot import build_classifier
    except ImportError:
        return None
    w = build_classifier(model, tokenizer, list(names), list(templates), cache_dir=False, progress=False)
    return w.detach().float().cpu().numpy().T  # [E, C] -> [C, E]


def class_vectors(model: CLIP, tokenizer: Tokenizer, names: Sequence[str],
                  templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
    """Unit class vectors ``[C, E]``: mean of the normalized prompt embeddings, renormalized."""
    weights = _zeroshot_weights(model, tokenizer, names, templates)
    if weights is None:
        from ..embed.runner import encode_texts

        prompts = [t.replace("{}", n) for n in names for t in templates]
        emb = encode_texts(model, tokenizer, prompts, normalize=True).reshape(len(names), len(templates), -1)
        weights = emb.mean(axis=1)
    return weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)


@dataclass
class ZeroShotLabels:
    """Class names, their unit vectors and the model's logit scale (for softmax probabilities)."""

    names: list[str]
    vectors: np.ndarray
    logit_scale: float = 100.0

    @classmethod
    def build(cls, model: CLIP, tokenizer: Tokenizer, names: Sequence[str],
              templates: Sequence[str] | None = None) -> ZeroShotLabels:
        scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
        return cls(list(names), class_vectors(model, tokenizer, names, resolve_templates(templates)), scale)

    def top(self, image_vectors: np.ndarray, k: int = 5) -> list[list[dict[str, Any]]]:
        """For each unit image vector, the ``k`` best labels with cosine score and softmax probability."""
        x = np.atleast_2d(np.asarray(image_vectors, dtype=np.float32))
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        cos = x @ self.vectors.T  # [N, C]
        logits = self.logit_scale * cos
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(k, len(self.names))
        out = []
        for i in range(len(x)):
            order = np.argsort(-cos[i], kind="stable")[:k]
            out.append([{"label": self.names[j], "score": float(cos[i, j]), "prob": float(probs[i, j])}
                        for j in order])
        return out
