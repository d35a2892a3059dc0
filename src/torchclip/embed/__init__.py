"""``torchclip embed``: image collections or texts -> embeddings with ids, streaming and resumable.

Public API: :func:`open_source` (folder, WebDataset shards, CSV, text file), :func:`embed_source` (the
resumable loop), :func:`load_embeddings` (read an output back), :func:`encode_images` /
:func:`encode_texts` (in-memory helpers used by search and serve) and :class:`ModelSpec` (how a model is
named so that later commands rebuild the same one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "decode": ("open_image",),
    "modelspec": ("ModelSpec",),
    "runner": ("EmbedResult", "embed_source", "encode_images", "encode_texts"),
    "sources": ("Item", "Source", "open_source"),
    "store": ("Embeddings", "ResumeError", "load_embeddings"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .decode import open_image as open_image
    from .modelspec import ModelSpec as ModelSpec
    from .runner import EmbedResult as EmbedResult
    from .runner import embed_source as embed_source
    from .runner import encode_images as encode_images
    from .runner import encode_texts as encode_texts
    from .sources import Item as Item
    from .sources import Source as Source
    from .sources import open_source as open_source
    from .store import Embeddings as Embeddings
    from .store import ResumeError as ResumeError
    from .store import load_embeddings as load_embeddings
