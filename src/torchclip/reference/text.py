"""The text tower: a GPT-2-style causal transformer pooled at each row's first end-of-text token."""

from __future__ import annotations

import torch
from torch import nn

from ..config import CLIPConfig
from .layers import LayerNorm, Transformer, static_graph

__all__ = ["TextTransformer"]


class TextTransformer(nn.Module):
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
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        attn_std, proj_std = t.width**-0.5, t.width**-0.5 * (2 * t.layers) ** -0.5
        for block in self.transformer.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * t.width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        nn.init.normal_(self.proj, std=t.width**-0.5)

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the first end-of-text id in each row: [B]. Raises if a row has none.

        OpenAI pools at ``argmax(ids)``, the first end-of-text token because that id is the largest;
        looking for the id itself turns a tokenizer/model mismatch into an error instead of features
        pooled at a random position. A traced or compiled graph cannot hold these checks and skips them.
        """
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [batch, length], got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]} > context length {self.context_length}")
        is_eot = ids == self.eot_id  # [B, L]
        if not static_graph() and ids.numel():
            if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
                raise ValueError(
                    f"token ids outside [0, {self.vocab_size}): min {int(ids.min())}, max {int(ids.max())}; "
                    "was the text tokenized with this model's vocabulary?")
            has_eot = is_eot.any(dim=1)
            if not bool(has_eot.all()):
                bad = torch.nonzero(~has_eot).flatten()[:5].tolist()
                raise ValueError(f"rows {bad} hold no end-of-text id {self.eot_id}: tokenizer and model "
                                 "disagree (or the text was cut without forcing end-of-text)")
        return is_eot.int().argmax(dim=1)

    def forward(self, ids: torch.Tensor, projected: bool = True) -> torch.Tensor:
        """[B, L <= context] token ids -> [B, E] features ([B, W] before the projection)."""
        pos = self.eot_positions(ids)  # [B]
        if not static_graph() and ids.shape[0]:  # causal: columns after the last end-of-text change nothing
            ids = ids[:, : int(pos.max()) + 1]
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]]  # [B, n, W]
        x = self.transformer(x.to(self.proj.dtype), causal=True)
        x = self.norm_final(x[torch.arange(x.shape[0], device=x.device), pos])  # [B, W]
        return x @ self.proj if projected else x
