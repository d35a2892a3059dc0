"""OpenCLIP's ``open_clip`` module on torchclip: ``from torchclip.compat import open_clip``.

Names mean what they mean in OpenCLIP: ``ViT-B-32`` is the GELU architecture, ``ViT-B-32-quickgelu`` the
QuickGELU one, a ``pretrained`` tag selects weights from the zoo (``list_pretrained()``), and
``hf-hub:org/repo`` / ``local-dir:/path`` load an OpenCLIP (or transformers) folder. Models come back in
train mode, as OpenCLIP's do, and their call returns ``(image_features, text_features, logit_scale.exp())``
(normalized features; a sigmoid-loss model appends its ``logit_bias``), or a dict with ``output_dict=True``.
``jit=True`` returns the eager model with a warning: torchclip never runs TorchScript code.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import CLIPConfig, PreprocessConfig, get_preset
from ..model import CLIP
from ..tokenizer import Tokenizer

__all__ = ["create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "list_models", "list_pretrained", "tokenize", "OpenCLIPModel", "OpenCLIPTokenizer"]

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"


class OpenCLIPModel(CLIP):
    """torchclip's CLIP whose call returns what ``open_clip.CLIP``'s does."""

    output_dict = False

    def forward(self, image: torch.Tensor | None = None,  # type: ignore[override]
                text: torch.Tensor | None = None) -> tuple[Any, ...] | dict[str, Any]:
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = self.logit_scale.exp()
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            return out if self.logit_bias is None else {**out, "logit_bias": self.logit_bias}
        if self.logit_bias is not None:  # a sigmoid-loss model: OpenCLIP appends its bias
            return image_features, text_features, scale, self.logit_bias
        return image_features, text_features, scale


class OpenCLIPTokenizer:
    """OpenCLIP's tokenizer call: ``tokenizer(texts, context_length=None)`` -> int64 ids, always truncating
    (the last kept id becomes end-of-text), as ``open_clip.SimpleTokenizer`` does."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.vocab_size = tokenizer.vocab_size
        self.sot_token_id = tokenizer.sot_id
        self.eot_token_id = tokenizer.eot_id

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        return self.tokenizer(texts, context_length=context_length or self.context_length, truncate=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self.tokenizer.decode(ids)


def _split(model_name: str) -> tuple[str | None, str]:
    for schema in (HF_HUB_PREFIX, LOCAL_DIR_PREFIX):
        if model_name.startswith(schema):
            rest = model_name[len(schema):]
            if not rest:
                raise ValueError(f"empty identifier after {schema!r}")
            return schema[:-1], rest
    return None, model_name


def _folder_for(schema: str, identifier: str, cache_dir: str | None) -> Path:
    if schema == "local-dir":
        folder = Path(identifier)
        if not folder.is_dir():
            raise FileNotFoundError(f"Directory specified via 'local-dir:' schema not found: {folder}")
        return folder
    from ..hub import download_hub_model

    if cache_dir is not None:
        os.environ.setdefault("HF_HUB_CACHE", cache_dir)
    return download_hub_model(identifier)


def _lower_precision(model: CLIP, precision: str) -> CLIP:
    """OpenCLIP's ``precision``: ``fp16``/``bf16`` cast everything but the LayerNorms (which torchclip computes
    in fp32 anyway), ``pure_*`` cast everything, ``fp32``/``amp*`` keep fp32 weights."""
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "pure_fp16": torch.float16, "pure_bf16": torch.bfloat16}
    if precision in ("fp32", "amp", "amp_bf16", "amp_bfloat16"):
        return model.float()
    if precision not in dtypes:
        raise ValueError(f"unknown precision {precision!r}: fp32, fp16, bf16, pure_fp16, pure_bf16, amp, amp_bf16")
    dtype = dtypes[precision]
    if precision.startswith("pure_"):
        return model.to(dtype)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
    return model


def create_model(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_patch_dropout: float | None = None,
    force_image_size: int | tuple[int, int] | None = None,
    force_context_length: int | None = None,
    pretrained_image: bool = False,
    pretrained_text: bool = True,
    cache_dir: str | None = None,
    output_dict: bool | None = None,
    require_pretrained: bool = False,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> OpenCLIPModel:
    """``open_clip.create_model``: an architecture name with a ``pretrained`` tag or file, or a
    ``hf-hub:``/``local-dir:`` folder (``pretrained`` then ignored, as in OpenCLIP)."""
    from ..checkpoints import load_model

    if force_custom_text or model_kwargs:
        raise ValueError("torchclip builds CLIP's own towers: force_custom_text and extra model kwargs "
                         f"({sorted(model_kwargs)}) have no counterpart")
    if force_image_size is not None or force_context_length is not None:
        raise ValueError("force_image_size / force_context_length (position-embedding resizing) are not "
                         "supported: build the architecture at its own size")
    if not weights_only:
        raise ValueError("torchclip only reads checkpoints with a weights-only loader (weights_only=True)")
    if jit:
        warnings.warn("jit=True: torchclip never scripts or runs TorchScript code; returning the eager model",
                      UserWarning, stacklevel=2)
    schema, identifier = _split(model_name)
    if schema is not None:
        if pretrained:
            warnings.warn(f"Ignoring `pretrained='{pretrained}'` because `model_name` has '{schema}' schema.",
                          UserWarning, stacklevel=2)
        model = load_model(_folder_for(schema, identifier, cache_dir), activation="quick_gelu" if force_quick_gelu else None)
    else:
        config: CLIPConfig = get_preset(identifier)
        if force_quick_gelu:
            config = config.replace(activation="quick_gelu")
        if pretrained:
            from .. import api

            if cache_dir is not None:
                os.environ["TORCHCLIP_CACHE"] = cache_dir
            model = api.create_model(identifier, pretrained=pretrained,
                                     activation="quick_gelu" if force_quick_gelu else None)
        else:
            if require_pretrained:
                raise RuntimeError(f"Pretrained weights were required for (model: {model_name}, "
                                   f"pretrained: {pretrained}) but not loaded.")
            model = CLIP(config)
            model.preprocess_config = PreprocessConfig(image_size=config.vision.image_size)
            model.tokenizer = None
    if force_patch_dropout is not None:
        if model.config.vision.is_resnet:
            raise ValueError("force_patch_dropout needs a ViT image tower")
        model.config = model.config.replace(vision=dataclasses.replace(model.config.vision,
                                                                       patch_dropout=force_patch_dropout))
        model.visual.patch_dropout = force_patch_dropout
    model.__class__ = OpenCLIPModel
    model.output_dict = bool(output_dict)
    model = _lower_precision(model.to(device), precision)
    return model.train()  # OpenCLIP hands models out in train mode


def _transforms(model: CLIP, image_mean: Sequence[float] | None, image_std: Sequence[float] | None,
                image_interpolation: str | None, image_resize_mode: str | None
                ) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    from ..checkpoints import preprocess_config_of
    from ..transforms import transform_for

    pp = preprocess_config_of(model)
    pp = PreprocessConfig(image_size=pp.image_size, mean=tuple(image_mean or pp.mean), std=tuple(image_std or pp.std),
                          interpolation=image_interpolation or pp.interpolation,
                          resize_mode=image_resize_mode or pp.resize_mode)
    return transform_for(pp, train=True), transform_for(pp)


def create_model_and_transforms(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_patch_dropout: float | None = None,
    force_image_size: int | tuple[int, int] | None = None,
    force_context_length: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_interpolation: str | None = None,
    image_resize_mode: str | None = None,
    aug_cfg: Any = None,
    pretrained_image: bool = False,
    pretrained_text: bool = True,
    cache_dir: str | None = None,
    output_dict: bool | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> tuple[OpenCLIPModel, Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """``open_clip.create_model_and_transforms`` -> ``(model, preprocess_train, preprocess_val)``."""
    if aug_cfg:
        raise ValueError("aug_cfg (timm augmentations) has no torchclip counterpart; torchclip's training "
                         "transform is a random resized crop (torchclip.image_transform(size, train=True))")
    model = create_model(model_name, pretrained, precision, device, jit, force_quick_gelu, force_custom_text,
                         force_patch_dropout, force_image_size, force_context_length, pretrained_image,
                         pretrained_text, cache_dir, output_dict, weights_only=weights_only, **model_kwargs)
    train, val = _transforms(model, image_mean, image_std, image_interpolation, image_resize_mode)
    return model, train, val


def create_model_from_pretrained(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    jit: bool = False,
    force_quick_gelu: bool = False,
    force_custom_text: bool = False,
    force_image_size: int | tuple[int, int] | None = None,
    force_context_length: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_interpolation: str | None = None,
    image_resize_mode: str | None = None,
    return_transform: bool = True,
    cache_dir: str | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> OpenCLIPModel | tuple[OpenCLIPModel, Callable[[Any], torch.Tensor]]:
    """``open_clip.create_model_from_pretrained`` -> ``(model, preprocess)`` (weights required)."""
    model = create_model(model_name, pretrained, precision, device, jit, force_quick_gelu, force_custom_text,
                         force_image_size=force_image_size, force_context_length=force_context_length,
                         cache_dir=cache_dir, require_pretrained=True, weights_only=weights_only, **model_kwargs)
    if not return_transform:
        return model
    return model, _transforms(model, image_mean, image_std, image_interpolation, image_resize_mode)[1]


def get_tokenizer(model_name: str = "", context_length: int | None = None, cache_dir: str | None = None,
                  **kwargs: Any) -> OpenCLIPTokenizer:
    """``open_clip.get_tokenizer``: the vocabulary and context length of an architecture or folder."""
    from ..api import get_tokenizer as tokenizer_for

    schema, identifier = _split(model_name)
    if kwargs:
        raise ValueError(f"unsupported tokenizer options {sorted(kwargs)}")
    source: Any = _folder_for(schema, identifier, cache_dir) if schema is not None else (identifier or None)
    tok = tokenizer_for(source)
    return OpenCLIPTokenizer(tok, context_length or tok.context_length)


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """``open_clip.tokenize``: OpenAI's vocabulary, truncating texts that do not fit."""
    from ..tokenizer import load_tokenizer

    return load_tokenizer()(texts, context_length=context_length, truncate=True)


def list_models() -> list[str]:
    """Architecture names torchclip builds, in OpenCLIP's spelling."""
    from ..config import OPEN_CLIP_MODELS

    return list(OPEN_CLIP_MODELS)


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """``(architecture, tag)`` pairs of the zoo; ``as_str``: ``"architecture:tag"`` strings."""
    from ..pretrained import list_pretrained as pairs

    out = pairs()
    return [f"{a}:{t}" for a, t in out] if as_str else out
