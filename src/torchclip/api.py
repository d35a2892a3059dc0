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
from .config import OPENAI_MODELS, CLIPConfig, HFTextConfig, canonical_name, get_preset, list_presets
from .hub import download_hub_model, hub_repo_id
from .model import CLIP
from .tokenizer import Tokenizer

__all__ = ["available_models", "load", "create_model", "list_pretrained", "pretrained_models", "get_tokenizer"]


def available_models() -> list[str]:
    """Every architecture name ``create_model`` builds: OpenAI's nine first, then OpenCLIP's, then CPU presets."""
    return list_presets()


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """Every pretrained (architecture, tag) pair, as OpenCLIP's ``list_pretrained`` (``"arch:tag"`` strings)."""
    from .pretrained import list_pretrained as _list

    return _list(as_str)


def pretrained_models() -> dict[str, list[str]]:
    """Architecture name -> its pretrained tags, for every name that has weights (OpenAI's spellings too)."""
    from .pretrained import list_pretrained_tags

    out = {}
    for name in available_models():
        tags = list_pretrained_tags(name)
        if tags:
            out[name] = tags
    return out


def _resolve_weights(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local checkpoint path for a model name (downloaded), a path, or a hub repo (downloaded)."""
    if isinstance(name_or_path, str) and canonical_name(name_or_path) is not None:
        name = canonical_name(name_or_path)
        from .pretrained import download_pretrained, list_pretrained_tags

        tags = list_pretrained_tags(name)
        if "openai" not in tags and tags:
            raise ValueError(f"{name!r} has no OpenAI release; its pretrained tags: {', '.join(tags)} "
                             f"(create_model({name!r}, pretrained=tag))")
        if "openai" not in tags:
            raise ValueError(
                f"{name!r} is a preset without published weights: use create_model({name!r}) for a "
                f"randomly initialised one; pretrained: {', '.join(OPENAI_MODELS)}"
            )
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
                 device: str | torch.device = "cpu", *, activation: str | None = None) -> CLIP:
    """A model from an architecture name or config: random init (the paper's), or ``pretrained`` weights.

    Names mean what they mean in OpenCLIP (``ViT-B-32`` GELU, ``ViT-B-32-quickgelu`` QuickGELU; ``RN50`` too is
    OpenCLIP's GELU one) and OpenAI's spellings OpenAI's models (``ViT-B/32`` is QuickGELU). ``pretrained`` is
    a tag of :func:`list_pretrained` for that name, built with the activation its weights were trained with
    (``create_model("ViT-B-32", pretrained="openai")`` is QuickGELU), or a checkpoint path. A plain state dict
    cannot say which activation it was trained with: the name (or ``activation=``) decides, and its shapes
    must be the name's. A file that records its config must agree with the name. ``activation`` overrides
    ``"gelu"`` / ``"quick_gelu"`` everywhere.
    """
    from .pretrained import get_pretrained, list_pretrained_tags

    config = get_preset(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if pretrained is None:
        return CLIP(config.replace(activation=activation or config.activation)).to(device)
    entry = None
    if isinstance(name_or_config, str) and isinstance(pretrained, str):
        try:  # a tag first, as OpenCLIP does; then a path
            entry = get_pretrained(name_or_config, pretrained)
        except KeyError:
            entry = None
    if entry is not None:
        config = config.replace(activation=entry.activation)
        path = entry.download()
    elif Path(pretrained).exists():
        path = Path(pretrained)
    elif isinstance(name_or_config, str):
        tags = list_pretrained_tags(name_or_config)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise ValueError(f"pretrained={str(pretrained)!r} is neither a pretrained tag of {name_or_config!r} "
                         f"({known}) nor an existing file")
    else:
        raise ValueError(f"pretrained={str(pretrained)!r} is not an existing file (a tag needs a model name)")
    if activation is not None:
        config = config.replace(activation=activation)
    # The architecture is the name's: a state dict cannot tell head widths or activation, and a file that
    # records its config must agree with it (readers.read_checkpoint checks both, before any allocation).
    model = load_model(path, device=device, config=config)
    if entry is not None:
        model.preprocess_config = entry.preprocess
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
    if tok is None and config is not None and isinstance(config.text, HFTextConfig):
        raise ValueError(f"{source!r}: its text tower is a pretrained language model, and no tokenizer travels "
                         "with it (a tokenizer.json beside the weights)")
    if tok is None:
        tok = load_tokenizer(context_length=ctx)
    elif tok.context_length != ctx:
        tok = copy.copy(tok)
        tok.context_length = ctx
    if config is not None and context_length is None:
        check_compatible(tok, config.text)
    return tok
