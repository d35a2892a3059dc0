"""CLIP: the two towers and a learnable temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig, HFTextConfig
from .text import TextTransformer
from .vision import build_vision

__all__ = ["CLIP", "CLIPOutput"]


@dataclass
class CLIPOutput:
    """What ``CLIP.forward`` returns. Embeddings are L2-normalized; logits are scale * cosine."""

    logits_per_image: torch.Tensor  # [N_img, N_txt]
    logits_per_text: torch.Tensor  # [N_txt, N_img]
    image_embeds: torch.Tensor  # [N_img, E], unit norm
    text_embeds: torch.Tensor  # [N_txt, E], unit norm
    logit_scale: torch.Tensor  # [], exp(model.logit_scale): the temperature's inverse
    logit_bias: torch.Tensor | None = None  # [], a sigmoid-loss model's bias: sigmoid(logits + bias) per pair


class CLIP(nn.Module):
    """Image tower + text tower + learnable temperature.

    ``encode_image`` / ``encode_text`` return unnormalized features, as OpenAI's do (``projected=False``:
    the representation before the projection); ``forward`` returns a ``CLIPOutput`` with normalized
    embeddings and logits scaled by exp(logit_scale), never clamped here (the trainer clamps the parameter).
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_vision(config)
        if isinstance(config.text, HFTextConfig):  # a pretrained language model (LiT): transformers' maths
            from .hf_text import HFTextTower

            self.text: nn.Module = HFTextTower(config)
        else:
            self.text = TextTransformer(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        # models trained with the sigmoid loss (OpenCLIP's --siglip) learn a bias as well
        self.logit_bias = (None if config.init_logit_bias is None
                           else nn.Parameter(torch.tensor(float(config.init_logit_bias))))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False, *, projected: bool = True) -> torch.Tensor:
        """[B, 3, R, R] normalized float pixels -> [B, E] features ([B, W] before the projection)."""
        x = self.run_tower(self.visual, pixels, projected)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False, *, projected: bool = True) -> torch.Tensor:
        """[B, L <= context] token ids -> [B, E] features, pooled at each row's first end-of-text id."""
        x = self.run_tower(self.text, ids, projected)
        return F.normalize(x, dim=-1) if normalize else x

    def run_tower(self, tower: nn.Module, x: torch.Tensor, projected: bool) -> torch.Tensor:
        """``tower(x, projected)``: where a subclass may compute the same thing another way."""
        return tower(x, projected=projected)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> CLIPOutput:
        img = self.encode_image(pixels, normalize=True)
        txt = self.encode_text(ids, normalize=True)
        scale = self.logit_scale.exp()
        logits = scale * img @ txt.t()
        return CLIPOutput(logits, logits.t(), img, txt, scale, self.logit_bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute transformer blocks in backward: activation memory O(layers) -> O(1) per tower."""
        if hasattr(self.text, "set_grad_checkpointing"):
            self.text.set_grad_checkpointing(enabled)
        else:
            self.text.transformer.grad_checkpointing = enabled
        if hasattr(self.visual, "transformer"):
            self.visual.transformer.grad_checkpointing = enabled

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
