"""Models on the Hugging Face Hub: ``hf-hub:org/name`` (OpenCLIP's spelling) and plain ``org/name`` repo ids.

Files come through ``huggingface_hub`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``, revisions, progress bars).
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) and ``TORCHCLIP_OFFLINE`` are read on every
call (the hub library reads them once, at import). A repo in OpenCLIP's layout (``open_clip_config.json`` +
weights) or transformers' ``CLIPModel`` layout (``config.json`` + weights, ``preprocessor_config.json`` and
the tokenizer files when present) comes back as the cache's snapshot folder, which
``readers.read_checkpoint`` reads like any folder on disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .download import DownloadError, is_offline

__all__ = ["HF_HUB_PREFIX", "hub_repo_id", "hub_offline", "first_hub_file", "download_hub_model"]

HF_HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "true", "yes", "on"}

# (config file, weight files in order of preference, optional files)
_LAYOUTS = (
    ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
     ("tokenizer.txt.gz", "vocab.json", "merges.txt")),
    ("config.json", ("model.safetensors", "pytorch_model.bin"),
     ("preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
      "special_tokens_map.json")),
)


def hub_repo_id(name: str) -> str | None:
    """The repo id ``name`` names on the hub (``hf-hub:org/name`` or ``org/name``), else None."""
    bare = name[len(HF_HUB_PREFIX):] if name.startswith(HF_HUB_PREFIX) else name
    bare = bare.rstrip("/")
    return bare if _REPO_ID.fullmatch(bare) else None


def hub_offline() -> bool:
    """Only the cache may be used: ``TORCHCLIP_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return is_offline() or any(f.strip().lower() in _TRUE for f in flags)


class _Hub:
    """One repo at one revision, fetched file by file through huggingface_hub's cache."""

    def __init__(self, repo_id: str, revision: str | None) -> None:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
            raise DownloadError(f"hf-hub:{repo_id} needs huggingface_hub (pip install huggingface_hub)") from e
        self.repo_id, self.revision = repo_id, revision
        self.offline = hub_offline()
        self.endpoint = os.environ.get("HF_ENDPOINT") or None

    def fetch(self, filename: str) -> Path | None:
        """The cached file; None if the repo has no such file (or, offline, the cache has none)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.repo_id, filename, revision=self.revision, endpoint=self.endpoint,
                                        local_files_only=self.offline, library_name="torchclip"))
        except LocalEntryNotFoundError:
            if self.offline:
                return None
            raise  # online, yet neither the hub nor the cache answered
        except EntryNotFoundError:
            return None

    def errors(self, e: Exception) -> DownloadError:
        """One clear ``DownloadError`` for whatever the hub library raised."""
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        at = f"hf-hub:{self.repo_id} (revision {self.revision or 'main'})"
        if isinstance(e, RepositoryNotFoundError):
            return DownloadError(f"hf-hub:{self.repo_id}: no such repository on the hub (or it is private: set "
                                 "HF_TOKEN)")
        if isinstance(e, RevisionNotFoundError):
            return DownloadError(f"{at}: no such revision")
        if isinstance(e, LocalEntryNotFoundError):
            return DownloadError(f"{at}: cannot reach the hub and the files are not in the cache ({e}); set "
                                 "HF_ENDPOINT for a mirror, or place the files in the huggingface_hub cache and "
                                 "use HF_HUB_OFFLINE=1")
        return DownloadError(f"{at}: {type(e).__name__}: {e}")


def _guarded(hub: _Hub, work: Callable[[], Path]) -> Path:
    """``work()``, with whatever the hub library raises turned into one ``DownloadError``."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return work()
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        if isinstance(e, DownloadError):
            raise
        raise hub.errors(e) from e


def first_hub_file(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> Path:
    """The first of ``filenames`` that ``repo_id`` holds, downloaded (or from the cache)."""
    hub = _Hub(repo_id, revision)

    def work() -> Path:
        for name in filenames:
            found = hub.fetch(name)
            if found is not None:
                return found
        where = "in the local HF cache (offline)" if hub.offline else "on the hub"
        raise DownloadError(f"hf-hub:{repo_id}: none of {', '.join(filenames)} found {where} "
                            f"(revision {revision or 'main'})")

    return _guarded(hub, work)


def download_hub_model(repo_id: str, revision: str | None = None) -> Path:
    """The local folder holding ``repo_id``'s CLIP checkpoint, downloading what is not cached yet."""
    hub = _Hub(repo_id, revision)

    def work() -> Path:
        for config_name, weight_names, optional in _LAYOUTS:
            config = hub.fetch(config_name)
            if config is None:
                continue
            weights = next((w for w in map(hub.fetch, weight_names) if w is not None), None)
            if weights is None:
                raise DownloadError(f"hf-hub:{repo_id}: has {config_name} but none of {', '.join(weight_names)}")
            for name in optional:
                hub.fetch(name)
            return config.parent
        if hub.offline:
            raise DownloadError(f"hf-hub:{repo_id}: offline (HF_HUB_OFFLINE / TORCHCLIP_OFFLINE) and the model is "
                                "not in the cache: run once online, or copy the repo into the huggingface_hub cache")
        raise DownloadError(f"hf-hub:{repo_id}: neither open_clip_config.json nor config.json in the repository: "
                            "not an OpenCLIP or transformers CLIP repository")

    return _guarded(hub, work)
