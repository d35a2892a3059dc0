"""The entry points users of openai/CLIP and OpenCLIP reach for: ``available_models``, ``load``,
``create_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoints import load_model, read_checkpoint
from .config import OPENAI_MODELS, CLIPConfig, canonical_name, get_preset, list_presets
from .formats import CheckpointError, check_state_dict
from .model import CLIP

__all__ = ["available_models", "load", "create_model", "list_pretrained", "pretrained_models"]


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


def _resolve_weights(name_or_path: str | os.PathLike[str]) -> Path:
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
    if not path.exists():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a model name ({', '.join(available_models())}) nor an existing file"
        )
    return path


def _preprocess_for(model: CLIP) -> Callable[[Any], torch.Tensor]:
    from .transforms import image_transform

    return image_transform(model.config.vision.image_size)


def load(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu", *,
         activation: str | None = None) -> tuple[CLIP, Callable[[Any], torch.Tensor]]:
    """``(model, preprocess)`` for a pretrained model name or any checkpoint file/folder.

    Names download (with checksum) into ``$TORCHCLIP_CACHE``. Files are auto-detected: OpenAI TorchScript
    archives (read without executing them), OpenAI/OpenCLIP state dicts and training checkpoints, HF
    ``CLIPModel`` folders and torchclip safetensors. The model is in eval mode in fp32.
    """
    model = load_model(_resolve_weights(name_or_path), device=device, activation=activation)
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
    return _load_into(config, path, device, name_or_config, keep_recorded_activation=activation is None)


def _load_into(config: CLIPConfig, path: Path, device: str | torch.device, name: str | CLIPConfig,
               keep_recorded_activation: bool) -> CLIP:
    """Build ``config`` and load ``path``'s weights into it, strictly, shapes checked before any copy.

    The architecture comes from ``config``, not from the file: a state dict's shapes cannot tell head width
    (ViT-H/14's 80, ViT-g/14's 88) or activation, so inferring them would build the wrong model silently.
    A file that records its config (torchclip, HF) must agree with ``config``, its activation included unless
    the caller overrode it.
    """
    ckpt = read_checkpoint(path)
    if ckpt.format in ("torchclip", "hf"):
        recorded = ckpt.config if keep_recorded_activation else ckpt.config.replace(activation=config.activation)
        got = recorded.replace(source="", init_logit_scale=config.init_logit_scale)
        if got != config.replace(source=""):
            raise CheckpointError(f"checkpoint {path} holds a different architecture than {name!r}: "
                                  f"{ckpt.config} vs {config}")
    with torch.device("meta"):
        model = CLIP(config)
    try:
        check_state_dict(ckpt.state_dict, model.state_dict(), str(path))
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path} holds a different architecture than {name!r}: {e}") from e
    # Owned, 64-byte aligned copies of safetensors' mapped views, as load_model does (alignment changes how
    # oneDNN/MKL kernels round).
    state = {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in ckpt.state_dict.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
