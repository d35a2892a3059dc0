"""HF transformers' CLIP entry points on torchclip: ``from torchclip.compat.transformers import CLIPModel, CLIPProcessor``.

``CLIPModel.from_pretrained`` takes what transformers' does (a hub repo id or a folder) and any checkpoint
torchclip reads; the model's call takes ``input_ids`` / ``pixel_values`` (``attention_mask`` is accepted:
torchclip pools at the end-of-text token, which padding never moves) and returns ``logits_per_image``,
``logits_per_text``, ``text_embeds`` and ``image_embeds``; ``get_image_features(pixel_values=...)`` and
``get_text_features(input_ids=...)`` return the projected, unnormalized features as tensors.
``CLIPProcessor`` tokenizes and preprocesses as the checkpoint records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..model import CLIP, CLIPOutput

__all__ = ["CLIPModel", "CLIPProcessor"]


class CLIPModel(CLIP):
    """torchclip's CLIP with transformers' ``CLIPModel`` call and feature methods."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, revision: str | None = None,
                        **kwargs: Any) -> CLIPModel:
        """A hub repo id (``openai/clip-vit-base-patch32``) or a local folder/file, in eval mode."""
        from ..api import load

        unsupported = set(kwargs) - {"torch_dtype", "dtype", "device_map", "local_files_only"}
        if unsupported:
            raise ValueError(f"unsupported from_pretrained options {sorted(unsupported)}")
        model, _ = load(name_or_path, revision=revision)
        model.__class__ = cls
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        return model

    def get_image_features(self, pixel_values: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **_: Any) -> torch.Tensor:
        return self.encode_text(input_ids)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,  # type: ignore[override]
                attention_mask: torch.Tensor | None = None, **_: Any) -> CLIPOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIPModel's call needs both input_ids and pixel_values (use get_text_features / "
                             "get_image_features for one tower)")
        return super().forward(pixel_values, input_ids)


class CLIPProcessor:
    """``processor(text=..., images=..., return_tensors="pt", padding=True)`` -> ``input_ids``,
    ``attention_mask``, ``pixel_values``, as transformers' ``CLIPProcessor`` returns them."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, revision: str | None = None,
                        **_: Any) -> CLIPProcessor:
        from ..api import _resolve_weights, get_tokenizer
        from ..config import PreprocessConfig
        from ..readers import read_checkpoint
        from ..transforms import transform_for

        path = _resolve_weights(name_or_path, revision)
        bundle = read_checkpoint(path, weights=False)
        pp = bundle.preprocess or PreprocessConfig(image_size=bundle.config.vision.image_size)
        return cls(get_tokenizer(path), transform_for(pp))

    def __call__(self, text: str | Sequence[str] | None = None, images: Any = None, return_tensors: str = "pt",
                 padding: bool | str = False, truncation: bool = False, max_length: int | None = None,
                 **_: Any) -> dict[str, torch.Tensor]:
        if return_tensors != "pt":
            raise ValueError("torchclip's processor returns torch tensors (return_tensors='pt')")
        out: dict[str, torch.Tensor] = {}
        if text is not None:
            ids = self.tokenizer(text, context_length=max_length, truncate=truncation)
            ends = (ids == self.tokenizer.eot_id).int().argmax(1, keepdim=True)  # [N, 1] each row's end-of-text
            if padding != "max_length" and len(ids):  # pad to the longest row, not to the context length
                ids = ids[:, : int(ends.max()) + 1]
            out["input_ids"] = ids
            out["attention_mask"] = (torch.arange(ids.shape[1]) <= ends).long()
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            out["pixel_values"] = torch.stack([self.image_processor(im) for im in images])
        return out
