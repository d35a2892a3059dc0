"""``torchclip index`` / ``torchclip search``: FAISS indexes over embeddings, and queries against them.

:class:`ClipIndex` builds (exact, IVF or HNSW, with measured recall), saves and loads an index;
:class:`Searcher` adds the model: text -> image, image -> image, similar items and zero-shot labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "AUTO_FLAT_MAX": "index",
    "ClipIndex": "index",
    "build_faiss_index": "index",
    "measure_recall": "index",
    "tune_search_param": "index",
    "ZeroShotLabels": "labels",
    "class_vectors": "labels",
    "load_label_names": "labels",
    "Hit": "query",
    "Searcher": "query",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "AUTO_FLAT_MAX",
    "ClipIndex",
    "Hit",
    "Searcher",
    "ZeroShotLabels",
    "build_faiss_index",
    "class_vectors",
    "load_label_names",
    "measure_recall",
    "tune_search_param",
]

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .index import AUTO_FLAT_MAX, ClipIndex, build_faiss_index, measure_recall, tune_search_param
    from .labels import ZeroShotLabels, class_vectors, load_label_names
    from .query import Hit, Searcher
