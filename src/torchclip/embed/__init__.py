"""``torchclip embed``: image collections or texts -> embeddings with ids, streaming and resumable.

Public API: :func:`open_source` (folder, WebDataset shards, CSV, text file), :func:`embed_source` (the
resumable loop), :func:`load_embeddings` (read an output back), :func:`encode_images` /
:func:`encode_texts` (in-memory helpers used by search and serve) and :class:`ModelSpec` (how a model is
named so that later commands rebuild the same one).
"""

from .decode import open_image
from .modelspec import ModelSpec
from .runner import EmbedResult, embed_source, encode_images, encode_texts
from .sources import Item, Source, open_source
from .store import Embeddings, ResumeError, load_embeddings

__all__ = [
    "EmbedResult",
    "Embeddings",
    "Item",
    "ModelSpec",
    "ResumeError",
    "Source",
    "embed_source",
    "encode_images",
    "encode_texts",
    "load_embeddings",
    "open_image",
    "open_source",
]
