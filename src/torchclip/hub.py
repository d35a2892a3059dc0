"""Models on the Hugging Face Hub: ``hf-hub:org/name`` (OpenCLIP's spelling) and plain ``org/name`` repo ids.

Files come through ``huggingface_hub`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``, revisions, progress bars); ``TORCHCLIP_OFFLINE=1`` also keeps it off the network. A repo
in OpenCLIP's layout (``open_clip_config.json`` + weights) or transformers' ``CLIPModel`` layout
(``config.json`` + weights, ``preprocessor_config.json`` and the tokenizer files when present) comes back as
the cache's snapshot folder, which ``readers.read_checkpoint`` reads like any folder on disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from .download import DownloadError, is_offline

__all__ = ["HF_HUB_PREFIX", "hub_repo_id", "download_hub_model"]

HF_HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# (config file, weight files in order of preference, optional files)
_LAYOUTS = (
    ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
     ("tokenizer.txt.gz", "vocab.json", "merges.txt")),
    ("config.json", ("model.safetensors", "pytorch_model.bin"),
     ("preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
      "special_tokens_map.json")),
)


def hub_repo_id(name: str) -> str | None:
    """The repo id ``name`` names on the hub (``hf-hub:org/name`` or ``org/name``), else None."""
    bare = name[len(HF_HUB_PREFIX):] if name.startswith(HF_HUB_PREFIX) else name
    bare = bare.rstrip("/")
    return bare if _REPO_ID.fullmatch(bare) else None


def download_hub_model(repo_id: str, revision: str | None = None) -> Path:
    """The local folder holding ``repo_id``'s CLIP checkpoint, downloading what is not cached yet."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise DownloadError("loading from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from e
    offline = is_offline() or bool(constants.HF_HUB_OFFLINE)

    def fetch(filename: str) -> Path | None:
        """The cached file, None if the repo has no such file (or, offline, the cache has none)."""
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline))
        except RemoteEntryNotFoundError:
            return None
        except LocalEntryNotFoundError:
            if offline:
                return None
            raise  # online, yet neither the hub nor the cache answered

    try:
        for config_name, weight_names, optional in _LAYOUTS:
            config = fetch(config_name)
            if config is None:
                continue
            weights = next((w for w in map(fetch, weight_names) if w is not None), None)
            if weights is None:
                raise DownloadError(f"hf-hub:{repo_id}: has {config_name} but none of {', '.join(weight_names)}")
            for name in optional:
                fetch(name)
            return config.parent
    except RepositoryNotFoundError as e:
        raise DownloadError(f"hf-hub:{repo_id}: no such repository on the hub (or it is private: set HF_TOKEN)") from e
    except HfHubHTTPError as e:
        raise DownloadError(f"hf-hub:{repo_id}: the hub answered {e}") from e
    except (OSError, ValueError, LocalEntryNotFoundError) as e:  # connection errors, nothing cached
        raise DownloadError(
            f"hf-hub:{repo_id}: cannot reach the hub and the files are not in the cache "
            f"({type(e).__name__}: {e}); set HF_ENDPOINT for a mirror, or copy the repo's files into the "
            "huggingface_hub cache and use HF_HUB_OFFLINE=1") from e
    if offline:
        raise DownloadError(f"hf-hub:{repo_id}: offline (HF_HUB_OFFLINE / TORCHCLIP_OFFLINE) and the model is "
                            "not in the cache: run once online, or copy the repo into the huggingface_hub cache")
    raise DownloadError(f"hf-hub:{repo_id}: neither open_clip_config.json nor config.json in the repository: "
                        "not an OpenCLIP or transformers CLIP repository")
