"""Registry of OpenAI's nine released CLIP checkpoints: where they live and what their bytes hash to.

OpenAI publishes each file under a URL whose second-to-last path segment *is* the file's SHA-256, so the
registry stores only (hash, file name) and builds the URL; a typo in either shows up as a test failure
rather than as a silently unverifiable download. Names are our preset names ("ViT-B/32"); the OpenCLIP
spellings ("ViT-B-32") are accepted too. The files land in :func:`torchclip.download.cache_dir` under
OpenAI's own file names, so ``TORCHCLIP_CACHE=~/.cache/clip`` reuses downloads made by the ``clip`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import canonical_name
from .download import download

__all__ = [
    "PretrainedFile",
    "OPENAI_PRETRAINED",
    "list_pretrained",
    "pretrained_file",
    "pretrained_url",
    "download_pretrained",
]

_OPENAI_BASE = "https://openaipublic.azureedge.net/clip/models"


@dataclass(frozen=True)
class PretrainedFile:
    """One downloadable checkpoint: its cache file name and SHA-256, and the URL built from them."""

    filename: str
    sha256: str
    base_url: str = _OPENAI_BASE

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.sha256}/{self.filename}"


OPENAI_PRETRAINED: dict[str, PretrainedFile] = {
    "RN50": PretrainedFile("RN50.pt", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    "RN101": PretrainedFile("RN101.pt", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"),
    "RN50x4": PretrainedFile("RN50x4.pt", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"),
    "RN50x16": PretrainedFile(
        "RN50x16.pt", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"
    ),
    "RN50x64": PretrainedFile(
        "RN50x64.pt", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"
    ),
    "ViT-B/32": PretrainedFile(
        "ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    ),
    "ViT-B/16": PretrainedFile(
        "ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    ),
    "ViT-L/14": PretrainedFile(
        "ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
    ),
    "ViT-L/14@336px": PretrainedFile(
        "ViT-L-14-336px.pt", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"
    ),
}


def list_pretrained() -> list[str]:
    """Names with a released OpenAI checkpoint, in OpenAI's ``available_models()`` order."""
    return list(OPENAI_PRETRAINED)


def pretrained_file(name: str) -> PretrainedFile:
    """Registry entry for ``name`` (preset or OpenCLIP spelling); KeyError listing the valid names."""
    key = name if name in OPENAI_PRETRAINED else canonical_name(name)
    if key is None or key not in OPENAI_PRETRAINED:
        raise KeyError(f"no OpenAI checkpoint named {name!r}; available: {', '.join(OPENAI_PRETRAINED)}")
    return OPENAI_PRETRAINED[key]


def pretrained_url(name: str) -> str:
    """The download URL of OpenAI's checkpoint ``name``."""
    return pretrained_file(name).url


def download_pretrained(name: str, *, progress: bool = True, cache: Path | None = None) -> Path:
    """Path to OpenAI's checkpoint ``name`` in the cache, downloading and verifying it if needed.

    With ``TORCHCLIP_OFFLINE=1`` only the cache is consulted; the error then says where to put the file.
    """
    entry = pretrained_file(name)
    return download(entry.url, entry.sha256, entry.filename, progress=progress, cache=cache)
