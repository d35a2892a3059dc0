"""The entry points users of openai/CLIP and OpenCLIP reach for: ``available_models``, ``load``,
``create_model``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoints import load_model, preprocess_config_of
from .config import CLIPConfig, canonical_name, get_preset, list_presets
from .hub import download_hub_model, hub_repo_id
from .model import CLIP
from .tokenizer import Tokenizer

__all__ = ["available_models", "load", "create_model", "pretrained_models", "get_tokenizer"]

# The nine released OpenAI checkpoints; the small CPU presets have no published weights.
_OPENAI_RELEASED = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                    "ViT-L/14@336px")


def available_models() -> list[str]:
    """Names of every model preset (the nine OpenAI models first, then the small CPU presets)."""
    return list_presets()


def pretrained_models() -> list[str]:
    """Presets with downloadable OpenAI weights."""
    return list(_OPENAI_RELEASED)


def _resolve_weights(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local checkpoint path for a model name (downloaded), a path, or a hub repo (downloaded)."""
    if isinstance(name_or_path, str) and canonical_name(name_or_path) is not None:
        name = canonical_name(name_or_path)
        if name not in _OPENAI_RELEASED:
            raise ValueError(
                f"{name!r} is a preset without published weights: use create_model({name!r}) for a "
                f"randomly initialised one; pretrained: {', '.join(_OPENAI_RELEASED)}"
            )
        from .pretrained import download_pretrained

        return download_pretrained(name)
    path = Path(name_or_path)
    if path.exists():
        return path
    repo = hub_repo_id(name_or_path) if isinstance(name_or_path, str) else None
    if repo is not None:
        return download_hub_model(repo, revision)
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a model name ({', '.join(available_models())}), an existing file or "
        "folder, nor a hub repo (hf-hub:org/name)"
    )


def _preprocess_for(model: CLIP) -> Callable[[Any], torch.Tensor]:
    from .transforms import transform_for

    return transform_for(preprocess_config_of(model))


def load(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
         activation: str | None = None, revision: str | None = None) -> tuple[CLIP, Callable[[Any], torch.Tensor]]:
    """``(model, preprocess)`` for a pretrained model name, a hub repo or any checkpoint file/folder.

    Names download (with checksum) into ``$TORCHCLIP_CACHE``; ``hf-hub:org/name`` (or ``org/name``) through
    huggingface_hub, at ``revision``. Files and folders are auto-detected (``torchclip.readers``): OpenAI
    TorchScript archives (read without executing them), OpenAI/OpenCLIP state dicts and training
    checkpoints, OpenCLIP hub folders, HF ``CLIPModel`` folders, torchclip files and run folders. The model
    is in eval mode in fp32, and ``preprocess`` is the one its checkpoint records.
    """
    model = load_model(_resolve_weights(name_or_path, revision), device=device, activation=activation)
    return model, _preprocess_for(model)


def create_model(name_or_config: str | CLIPConfig, pretrained: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu") -> CLIP:
    """A model from a preset name or config: random init (the paper's), or ``pretrained`` weights.

    ``pretrained`` may be ``"openai"`` (the released weights for that name) or a checkpoint path; the
    checkpoint's architecture must equal the preset's.
    """
    config = get_preset(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if pretrained is None:
        return CLIP(config).to(device)
    source = name_or_config if pretrained == "openai" else pretrained
    if pretrained == "openai" and not isinstance(name_or_config, str):
        raise ValueError("pretrained='openai' needs a model name")
    model = load_model(_resolve_weights(source), device=device, activation=config.activation)
    got = model.config.replace(source="", init_logit_scale=config.init_logit_scale)
    if got != config.replace(source=""):
        raise ValueError(f"checkpoint {pretrained} holds a different architecture than {name_or_config!r}: "
                         f"{got} vs {config}")
    return model


def get_tokenizer(source: str | os.PathLike[str] | CLIP | None = None, *,
                  context_length: int | None = None) -> Tokenizer:
    """The tokenizer a model needs: its vocabulary and its context length.

    ``source``: a loaded model (the vocabulary it was loaded or trained with, else OpenAI's), a model name
    (OpenAI's vocabulary at that architecture's context length), a checkpoint file or folder, a run folder
    or a hub repo (the vocabulary bundled with it, else OpenAI's), or None (OpenAI's, 77 tokens).
    ``context_length`` overrides the model's.
    """
    from .readers import read_checkpoint
    from .tokenizer import check_compatible, load_tokenizer

    tok, config = None, None
    if isinstance(source, CLIP):
        tok, config = getattr(source, "tokenizer", None), source.config
    elif isinstance(source, str) and canonical_name(source) is not None:
        config = get_preset(source)
    elif source is not None:
        path = Path(source)
        if not path.exists():
            repo = hub_repo_id(str(source))
            if repo is None:
                raise FileNotFoundError(f"{source!r} is neither a model name, a checkpoint nor a hub repo")
            path = download_hub_model(repo)
        bundle = read_checkpoint(path, weights=False)
        tok, config = bundle.tokenizer, bundle.config
    ctx = context_length or (config.text.context_length if config is not None else 77)
    if tok is None:
        tok = load_tokenizer(context_length=ctx)
    elif tok.context_length != ctx:
        tok = copy.copy(tok)
        tok.context_length = ctx
    if config is not None and context_length is None:
        check_compatible(tok, config.text)
    return tok
