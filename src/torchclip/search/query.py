"""Queries over an index: text -> image, image -> image, item -> similar items, and zero-shot labels.

A :class:`Searcher` pairs an index with the model (and tokenizer) that produced its vectors, rebuilt from
the ``ModelSpec`` stored by ``embed`` unless one is passed in. Encoding goes through a lock: the server
answers requests on several threads, and two concurrent forward passes on a CPU only compete for the same
cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..embed.modelspec import ModelSpec
from ..embed.runner import encode_images, encode_texts
from ..model import CLIP
from ..tokenizer import Tokenizer
from .index import ClipIndex
from .labels import ZeroShotLabels, load_label_names

__all__ = ["Hit", "Searcher"]


@dataclass
class Hit:
    """One result: index row, cosine score and the row's record (``id`` and where it came from)."""

    row: int
    score: float
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record.get("id"))

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "id": self.id, "score": round(self.score, 6),
                **{k: v for k, v in self.record.items() if k != "id"}}


class Searcher:
    """An index plus its model: encode a query, search, label."""

    def __init__(self, index: ClipIndex, model: CLIP, tokenizer: Tokenizer | None = None,
                 labels: ZeroShotLabels | None = None, spec: ModelSpec | None = None) -> None:
        if model.config.embed_dim != index.dim:
            raise ValueError(f"model embeds to {model.config.embed_dim} dimensions, the index holds {index.dim}")
        self.index = index
        self.model = model.eval()
        self.spec = spec
        self._tokenizer = tokenizer
        self.labels = labels
        self._lock = threading.Lock()

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], *, model: CLIP | None = None,
             tokenizer: Tokenizer | None = None, spec: ModelSpec | None = None, device: str = "cpu",
             labels: Sequence[str] | str | None = None, templates: Sequence[str] | str | None = None) -> Searcher:
        """Load an index folder and the model its metadata names (or ``model``/``spec``).

        ``labels`` overrides the index's own zero-shot label set; templates likewise.
        """
        index = ClipIndex.load(index_dir)
        stored = index.meta.get("model")
        if spec is None and stored:
            spec = ModelSpec.from_dict(stored)
        if model is None:
            if spec is None:
                raise ValueError(f"{index_dir}: the index does not name its model; pass one (--model)")
            model = spec.load_model(device)
        searcher = cls(index, model, tokenizer, spec=spec)
        names = labels if labels is not None else index.meta.get("labels")
        if names:
            tmpl = templates if templates is not None else index.meta.get("templates")
            searcher.labels = ZeroShotLabels.build(model, searcher.tokenizer, load_label_names(names), tmpl)
        return searcher

    @property
    def tokenizer(self) -> Tokenizer:
        """Loaded on first use: image-only use of an index never needs a vocabulary."""
        if self._tokenizer is None:
            if self.spec is not None:
                self._tokenizer = self.spec.load_tokenizer(self.model)
            else:
                from ..api import get_tokenizer

                self._tokenizer = get_tokenizer(self.model)
        return self._tokenizer

    @property
    def root(self) -> Path | None:
        root = self.index.meta.get("root")
        return Path(root) if root else None

    # ---- encoding --------------------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return encode_texts(self.model, self.tokenizer, list(texts))

    def encode_image(self, images: Sequence[Image.Image]) -> np.ndarray:
        with self._lock:
            return encode_images(self.model, list(images))

    # ---- queries ---------------------------------------------------------------------------------------

    def _hits(self, vectors: np.ndarray, k: int, exclude: int | None = None) -> list[list[Hit]]:
        extra = 1 if exclude is not None else 0
        scores, rows = self.index.search(vectors, k + extra)
        out = []
        for srow, rrow in zip(scores, rows):
            hits = [Hit(int(r), float(s), self.index.records[int(r)]) for s, r in zip(srow, rrow)
                    if r >= 0 and r != exclude]
            out.append(hits[:k])
        return out

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """Items most similar to a text query (text -> image for an image index)."""
        if not text.strip():
            raise ValueError("empty query")
        return self._hits(self.encode_text([text]), k)[0]

    def search_image(self, image: Image.Image, k: int = 10) -> list[Hit]:
        """Items most similar to an image (image -> image)."""
        return self._hits(self.encode_image([image]), k)[0]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        return self._hits(np.atleast_2d(vector), k)[0]

    def similar(self, row: int, k: int = 10) -> list[Hit]:
        """Items most similar to an indexed item, the item itself left out."""
        return self._hits(self.index.vector(row)[None], k, exclude=row)[0]

    def label_image(self, image: Image.Image, k: int = 5) -> list[dict[str, Any]]:
        """Zero-shot labels of an image (empty when the index has no label set)."""
        if self.labels is None:
            return []
        return self.labels.top(self.encode_image([image]), k)[0]

    def label_vector(self, vector: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        if self.labels is None:
            return []
        return self.labels.top(np.atleast_2d(vector), k)[0]
