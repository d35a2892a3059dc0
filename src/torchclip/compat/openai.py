"""openai/CLIP's ``clip`` module on torchclip: ``import torchclip.compat.openai as clip``.

``load`` returns ``(model, preprocess)`` like ``clip.load``; the model is torchclip's, its call returns
``(logits_per_image, logits_per_text)`` as OpenAI's does, and on CUDA its weights are fp16 as OpenAI's are
(``model.float()`` for fp32). ``jit=True`` asks for OpenAI's TorchScript module, whose code torchclip never
runs: the eager model is returned instead, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import OPENAI_MODELS
from ..model import CLIP
from ..tokenizer import tokenize as _tokenize

__all__ = ["available_models", "load", "tokenize", "OpenAICLIP"]


class OpenAICLIP(CLIP):
    """torchclip's CLIP whose call returns ``(logits_per_image, logits_per_text)``, as ``clip.model.CLIP``'s."""

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def vocab_size(self) -> int:
        return self.config.text.vocab_size

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        out = super().forward(image, text)
        return out.logits_per_image, out.logits_per_text


def available_models() -> list[str]:
    """The names of OpenAI's nine released models, in ``clip.available_models()``'s order."""
    return list(OPENAI_MODELS)


_DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load(name: str, device: str | torch.device = _DEFAULT_DEVICE, jit: bool = False,
         download_root: str | None = None) -> tuple[OpenAICLIP, Callable[[Any], torch.Tensor]]:
    """``clip.load``: a model name (downloaded into ``download_root``, default ``$TORCHCLIP_CACHE``) or a
    checkpoint path -> ``(model, preprocess)``, the model in eval mode."""
    from ..checkpoints import load_model, preprocess_config_of
    from ..pretrained import download_pretrained
    from ..readers import ArchitectureGuessWarning
    from ..transforms import transform_for

    if jit:
        warnings.warn("jit=True loads OpenAI's TorchScript code, which torchclip never executes: returning the "
                      "eager model (same weights, same outputs)", UserWarning, stacklevel=2)
    if name in OPENAI_MODELS:
        path = download_pretrained(name, "openai", cache=None if download_root is None else Path(download_root))
    elif os.path.isfile(name):
        path = Path(name)
    else:
        raise RuntimeError(f"Model {name} not found; available models = {available_models()}")
    with warnings.catch_warnings():  # a state dict is QuickGELU to openai/CLIP by definition
        warnings.simplefilter("ignore", ArchitectureGuessWarning)
        model = load_model(path)
    model.__class__ = OpenAICLIP
    model = model.to(device)
    if torch.device(device).type != "cpu":
        model.half()  # OpenAI's clip.load converts the weights to fp16 off the CPU
    return model.eval(), transform_for(preprocess_config_of(model))


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """``clip.tokenize``: int64 ``[N, context_length]`` ids with OpenAI's vocabulary."""
    return _tokenize(texts, context_length=context_length, truncate=truncate)
