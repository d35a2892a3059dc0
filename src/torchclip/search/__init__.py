"""``torchclip index`` / ``torchclip search``: FAISS indexes over embeddings, and queries against them.

:class:`ClipIndex` builds (exact, IVF or HNSW, with measured recall), saves and loads an index;
:class:`Searcher` adds the model: text -> image, image -> image, similar items and zero-shot labels.
"""

from .index import AUTO_FLAT_MAX, ClipIndex, build_faiss_index, measure_recall, tune_search_param
from .labels import ZeroShotLabels, class_vectors, load_label_names
from .query import Hit, Searcher

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
