"""The CLIP model: text tower, the two-tower module and its typed forward result."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig, get_preset
from .layers import LayerNorm, Packing, Transformer, hooks_see_plain_ops
from .vision import build_vision

__all__ = ["CLIP", "CLIPOutput", "TextTransformer", "create_model_from_config"]


@dataclass
class CLIPOutput:
    """What ``CLIP.forward`` returns. Embeddings are L2-normalized; logits are scale * cosine."""

    logits_per_image: torch.Tensor  # [N_img, N_txt]
    logits_per_text: torch.Tensor  # [N_txt, N_img]
    image_embeds: torch.Tensor  # [N_img, E], unit norm
    text_embeds: torch.Tensor  # [N_txt, E], unit norm
    logit_scale: torch.Tensor  # [], exp(model.logit_scale): the temperature's inverse


class TextTransformer(nn.Module):
    """GPT-2-style causal transformer pooled at the first end-of-text token."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        t = cfg.text
        self.context_length = t.context_length
        self.vocab_size = t.vocab_size
        self.eot_id = t.eot_id
        self.token_embed = nn.Embedding(t.vocab_size, t.width)
        self.pos_embed = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, cfg.activation)
        self.norm_final = LayerNorm(t.width)
        self.proj = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self._init_weights(t.width, t.layers)

    def _init_weights(self, width: int, layers: int) -> None:
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        nn.init.normal_(self.proj, std=width**-0.5)

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the first end-of-text id in each row: [B]. Raises if a row has none.

        OpenAI pools at ``argmax(ids)``, which is the first end-of-text token because that id is the
        largest; checking for the id itself turns a tokenizer/model mismatch into an error instead of
        features pooled at a random position.
        """
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [batch, length], got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]} > context length {self.context_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids outside [0, {self.vocab_size}): min {int(ids.min())}, max {int(ids.max())}; "
                "was the text tokenized with this model's vocabulary?"
            )
        is_eot = ids == self.eot_id  # [B, L]
        has_eot = is_eot.any(dim=1)
        if not bool(has_eot.all()):
            bad = torch.nonzero(~has_eot).flatten()[:5].tolist()
            raise ValueError(
                f"rows {bad} hold no end-of-text id {self.eot_id}: tokenizer and model disagree "
                "(or the text was cut without forcing end-of-text)"
            )
        return is_eot.int().argmax(dim=1)

    # Pack rows when at least this share of the [B, n] padded tokens would be padding.
    pack_min_padding = 0.1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        with hooks_see_plain_ops(self):
            return self._forward(ids)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.eot_positions(ids)  # [B]
        # Causal attention: tokens after a row's first end-of-text cannot change the feature pooled there,
        # so they are never computed. Exact, and most captions are far shorter than 77. Trimming the batch to
        # its longest row is free; when rows differ much in length, their real tokens are also packed back
        # to back so that the projections and MLPs (nearly all the FLOPs) skip every padded position.
        b = ids.shape[0]
        n = int(pos.max()) + 1 if b else 1
        dtype = self.proj.dtype
        lengths = pos + 1
        total = int(lengths.sum()) if b else 0
        if b > 1 and total <= (1 - self.pack_min_padding) * b * n:
            packing = Packing.from_lengths(lengths, n)
            rows = ids[:, :n].reshape(-1)  # [B*n]
            cols = torch.arange(n, device=ids.device).repeat(b)
            real = packing.scatter  # [T] padded slots of the real tokens, row by row
            # F.embedding, not pos_embed[idx]: indexing's backward (index_put_ accumulate) sums repeated
            # positions in a thread-dependent order, so seeded runs on 2+ threads drifted apart.
            x = (self.token_embed(rows[real]) + F.embedding(cols[real], self.pos_embed)).to(dtype)  # [T, W]
            x = self.transformer(x, causal=True, packing=packing)  # [T, W]
            x = x[torch.cumsum(lengths, 0) - 1]  # [B, W]: each row's last real token, its end-of-text
        else:
            x = self.token_embed(ids[:, :n])  # [B, n, W]
            x = (x + self.pos_embed[:n]).to(dtype)
            x = self.transformer(x, causal=True)  # [B, n, W]
            x = x[torch.arange(x.shape[0], device=x.device), pos]  # [B, W]
        return self.norm_final(x) @ self.proj  # [B, E]


class CLIP(nn.Module):
    """Image tower + text tower + learnable temperature.

    ``encode_image`` / ``encode_text`` return unnormalized features, as OpenAI's do; ``forward`` returns a
    ``CLIPOutput`` with normalized embeddings and logits scaled by exp(logit_scale) (never clamped here:
    the trainer clamps the parameter after each step).
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = build_vision(config)
        self.text = TextTransformer(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def dtype(self) -> torch.dtype:
        return self.text.proj.dtype

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, 3, R, R] normalized pixels -> [B, E] features."""
        x = self.visual(pixels)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, L<=ctx] token ids -> [B, E] features, pooled at each row's first end-of-text id."""
        x = self.text(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> CLIPOutput:
        img = self.encode_image(pixels, normalize=True)
        txt = self.encode_text(ids, normalize=True)
        scale = self.logit_scale.exp()
        logits = scale * img @ txt.t()
        return CLIPOutput(logits, logits.t(), img, txt, scale)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute transformer blocks in backward: activation memory O(layers) -> O(1) per tower."""
        self.text.transformer.grad_checkpointing = enabled
        if hasattr(self.visual, "transformer"):
            self.visual.transformer.grad_checkpointing = enabled

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def create_model_from_config(config: CLIPConfig | str) -> CLIP:
    """A randomly initialised model (the paper's initialisation) for a config or preset name."""
    if isinstance(config, str):
        config = get_preset(config)
    return CLIP(config)
