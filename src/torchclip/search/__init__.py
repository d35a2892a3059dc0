"""``torchclip index`` / ``torchclip search``: FAISS indexes over embeddings, and queries against them.

:class:`ClipIndex` builds (exact, IVF or HNSW, with measured recall), saves and loads an index;
:class:`Searcher` adds the model: text -> image, image -> image, similar items and zero-shot labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "index": ("AUTO_FLAT_MAX", "ClipIndex", "build_faiss_index", "measure_recall", "tune_search_param"),
    "labels": ("ZeroShotLabels", "class_vectors", "load_label_names"),
    "query": ("Hit", "Searcher"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .index import AUTO_FLAT_MAX as AUTO_FLAT_MAX
    from .index import ClipIndex as ClipIndex
    from .index import build_faiss_index as build_faiss_index
    from .index import measure_recall as measure_recall
    from .index import tune_search_param as tune_search_param
    from .labels import ZeroShotLabels as ZeroShotLabels
    from .labels import class_vectors as class_vectors
    from .labels import load_label_names as load_label_names
    from .query import Hit as Hit
    from .query import Searcher as Searcher
