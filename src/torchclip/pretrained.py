"""The pretrained zoo: every OpenCLIP (architecture, tag) pair whose architecture is CLIP's, as data.

Each :class:`Pretrained` entry holds what loading the weights right needs: where the file lives (a URL with its
published SHA-256 or its first hex digits, and/or an HF hub repo holding OpenCLIP's files), the activation the
weights were trained with, and the preprocessing they expect (mean/std, interpolation, resize mode; the image size
comes from the architecture). The facts come from open_clip's ``pretrained.py`` and ``model_configs/``: the
entries and the excluded architectures are data, ``zoo.json`` next to this file, written by ``tools/gen_zoo.py``
and checked against open_clip by ``tests/test_zoo.py``.

Names follow OpenCLIP: ``ViT-B-32`` is its GELU architecture, ``ViT-B-32-quickgelu`` the QuickGELU twin.
A tag's activation wins over the name's: OpenCLIP lists ``("ViT-B-32", "openai")`` with ``quick_gelu=True``
because OpenAI trained with QuickGELU, so the entry builds QuickGELU (open_clip itself builds the name's GELU
and only warns). OpenAI's spellings (``ViT-B/32``, ``ViT-L/14@336px``) look up the ``-quickgelu`` twin's tags.

URL files land in :func:`torchclip.download.cache_dir` under their own file names (OpenAI's ``ViT-B-32.pt`` etc.,
so ``TORCHCLIP_CACHE=~/.cache/clip`` reuses files the ``clip`` package downloaded); hub files go through
``huggingface_hub`` and its cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, revisions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import (
    OPENAI_MEAN,
    OPENAI_MODELS,
    OPENAI_STD,
    OPENAI_TWINS,
    CLIPConfig,
    PreprocessConfig,
    canonical_name,
    get_preset,
)
from .download import download

__all__ = [
    "Pretrained",
    "EXCLUDED",
    "EXCLUSION_REASONS",
    "HUB_FILES",
    "get_pretrained",
    "list_pretrained",
    "list_pretrained_tags",
    "openai_pretrained",
    "pretrained_url",
    "download_pretrained",
]

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# OpenCLIP's files in a hub repo, in the order it tries them (safetensors first).
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class Pretrained:
    """One pretrained checkpoint of the zoo and the preprocessing its weights expect."""

    arch: str  # OpenCLIP's architecture name, a key of torchclip.config.PRESETS
    tag: str
    activation: str  # the activation the weights were trained with
    url: str | None = None
    sha256: str | None = None  # the full hex digest, or the leading hex digits a release file name publishes
    hf_hub: str | None = None  # HF repo id holding OpenCLIP's files (HUB_FILES)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # OpenCLIP's eval resize: shortest (OpenAI's), longest or squash

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.tag}"

    @property
    def config(self) -> CLIPConfig:
        """The architecture with the activation these weights need."""
        return get_preset(self.arch).replace(activation=self.activation)

    @property
    def image_size(self) -> int:
        return get_preset(self.arch).vision.image_size

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing these weights were trained with."""
        return PreprocessConfig(self.image_size, mean=self.mean, std=self.std, interpolation=self.interpolation,
                                resize_mode=self.resize_mode)

    @property
    def source(self) -> str:
        """Where :meth:`download` fetches from by default: a checksummed URL, else the hub."""
        if self.url and (self.sha256 or not self.hf_hub):
            return "url"
        return "hf-hub"

    def download(self, *, source: str | None = None, revision: str | None = None, progress: bool = True,
                 cache: Path | None = None) -> Path:
        """Local path of the checkpoint file, fetched (and verified, for URLs) if it is not cached yet.

        ``source`` picks ``"url"`` or ``"hf-hub"`` when the entry has both; ``revision`` is a hub branch, tag
        or commit; ``cache`` overrides the URL cache directory. Hub files use the hub's own cache and progress
        bars (``HF_HUB_DISABLE_PROGRESS_BARS``).
        """
        source = source or self.source
        if source == "url":
            if not self.url:
                raise ValueError(f"{self.name} has no direct URL; use source='hf-hub' ({self.hf_hub})")
            return download(self.url, self.sha256, _url_filename(self.url), progress=progress, cache=cache)
        if source == "hf-hub":
            if not self.hf_hub:
                raise ValueError(f"{self.name} is not on the HF hub; use source='url' ({self.url})")
            return _hub_download(self.hf_hub, revision=revision)
        raise ValueError(f"source must be 'url' or 'hf-hub', got {source!r}")


def _url_filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _hub_download(repo_id: str, *, revision: str | None) -> Path:
    """OpenCLIP's weights file of a hub repo: the safetensors file if the repo has one, else the pickle."""
    from .hub import first_hub_file

    return first_hub_file(repo_id, HUB_FILES, revision)


_NORMS = {"openai": (OPENAI_MEAN, OPENAI_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}


def _load_zoo() -> tuple[tuple[Pretrained, ...], dict[str, str]]:
    """The zoo's entries and the excluded architectures (with their reason keys) from ``zoo.json``."""
    doc = json.loads(resources.files(__package__).joinpath("zoo.json").read_text(encoding="utf-8"))
    zoo = []
    for row in doc["pretrained"]:
        mean, std = _NORMS[row.pop("norm", "openai")]
        zoo.append(Pretrained(**row, mean=mean, std=std))
    return tuple(zoo), doc["excluded"]


# Why an OpenCLIP architecture with pretrained weights is not in the zoo (keys of EXCLUDED's values).
EXCLUSION_REASONS: dict[str, str] = {
    "coca": "CoCa: an attentional pooler over the image tokens and a multimodal text decoder for captioning; "
            "torchclip has neither.",
    "siglip": "SigLIP/SigLIP2: a timm ViT with a MAP (attention-pool latent) head and no class token or ln_pre; "
              "a bidirectional text transformer (no causal mask) pooling the last token, LayerNorm eps 1e-6, a "
              "projection with bias, tanh-approximated GELU (SigLIP2); SentencePiece/Gemma tokenizers "
              "(32k-256k ids, 64-token context); a learned logit bias for the sigmoid loss; squash resize with "
              "mean/std 0.5. torchclip would need a MAP pooling head, a non-causal last-token text pooler, "
              "bias/eps/GELU-tanh knobs, an HF tokenizer path and a big_vision/timm key converter.",
    "hf-text-tower": "the text tower is a HuggingFace transformer (RoBERTa, XLM-RoBERTa, NLLB) with its own "
                     "tokenizer and pooler, not CLIP's causal text transformer.",
    "timm-image-tower": "the image tower is a timm model (EVA, ConvNeXt, ViTamin, MobileCLIP's MCi/FastViT, "
                        "Perception Encoder), not CLIP's ViT or ModifiedResNet.",
    "clipa": "CLIPA: a ViT without ln_pre that mean-pools its tokens with the final LayerNorm after pooling, and "
             "a bidirectional BERT-tokenized text tower pooling the last token.",
    "foreign-tokenizer": "MetaCLIP 2 (worldwide): CLIP's towers, but a multilingual HF tokenizer "
                         "(facebook/xlm-v-base, 901,629 ids) and pooling at the first id 2; torchclip ships only "
                         "CLIP's BPE. The towers fit TextConfig(vocab_size=901629, eot_id=2); the tokenizer is "
                         "what is missing.",
}

_ZOO, EXCLUDED = _load_zoo()

_REGISTRY: dict[tuple[str, str], Pretrained] = {(e.arch, e.tag): e for e in _ZOO}


def _clean_tag(tag: str) -> str:
    # OpenCLIP's normalisation: "LAION2B-S34B-B79K" finds laion2b_s34b_b79k.
    return tag.lower().replace("-", "_")


def _zoo_arch(name: str) -> str | None:
    key = canonical_name(name)
    return OPENAI_TWINS.get(key, key) if key is not None else None


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """Every (architecture, tag) pair of the zoo in OpenCLIP's order, or ``"arch:tag"`` strings."""
    return [e.name if as_str else (e.arch, e.tag) for e in _ZOO]


def list_pretrained_tags(name: str) -> list[str]:
    """The tags of architecture ``name`` (OpenCLIP or OpenAI spelling); empty when it has none."""
    arch = _zoo_arch(name)
    return [e.tag for e in _ZOO if e.arch == arch]


def get_pretrained(name: str, tag: str) -> Pretrained:
    """The zoo entry for ``(name, tag)``; KeyError naming the architecture's tags when there is none."""
    arch = _zoo_arch(name)
    entry = _REGISTRY.get((arch, _clean_tag(tag))) if arch is not None else None
    if entry is None:
        tags = list_pretrained_tags(name)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained weights"
        raise KeyError(f"no pretrained weights {tag!r} for {name!r}; {known}")
    return entry


def openai_pretrained(name: str) -> Pretrained:
    """OpenAI's released checkpoint for an OpenAI name (``ViT-B/32``, ``RN50``) or its OpenCLIP spelling."""
    arch = _zoo_arch(name)
    entry = _REGISTRY.get((arch, "openai")) if arch is not None else None
    if entry is None:
        raise KeyError(f"no OpenAI checkpoint named {name!r}; available: {', '.join(OPENAI_MODELS)}")
    return entry


def pretrained_url(name: str, tag: str = "openai") -> str:
    """The direct download URL of ``(name, tag)``; ValueError for hub-only entries."""
    entry = get_pretrained(name, tag)
    if not entry.url:
        raise ValueError(f"{entry.name} has no direct URL; it is on the HF hub as {entry.hf_hub}")
    return entry.url


def download_pretrained(name: str, tag: str = "openai", *, progress: bool = True, cache: Path | None = None,
                        source: str | None = None, revision: str | None = None) -> Path:
    """Path to the checkpoint of ``(name, tag)`` in the cache, downloading and verifying it if needed.

    The default tag is OpenAI's release. With ``TORCHCLIP_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for hub entries)
    only the caches are consulted; the error then says where to put the file.
    """
    entry = openai_pretrained(name) if tag == "openai" else get_pretrained(name, tag)
    return entry.download(source=source, revision=revision, progress=progress, cache=cache)
