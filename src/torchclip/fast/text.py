"""The reference text tower for inference: rows of different lengths packed back to back.

Causal attention makes the tokens after a row's first end-of-text irrelevant to the feature pooled there,
so they are never computed; when rows differ much in length, their real tokens are packed so that the
projections and MLPs (nearly all the FLOPs) skip every padded position, and only attention sees a padded
layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference.text import TextTransformer
from .transformer import Packing, stack

__all__ = ["encode_text", "PACK_MIN_PADDING"]

# Pack rows when at least this share of the [B, n] padded tokens would be padding.
PACK_MIN_PADDING = 0.1


def encode_text(t: TextTransformer, ids: torch.Tensor, projected: bool = True) -> torch.Tensor:
    """``t(ids, projected)`` without autograd."""
    pos = t.eot_positions(ids)  # [B]
    b = ids.shape[0]
    n = int(pos.max()) + 1 if b else 1
    lengths = pos + 1
    if b > 1 and int(lengths.sum()) <= (1 - PACK_MIN_PADDING) * b * n:
        packing = Packing.from_lengths(lengths, n)
        rows = ids[:, :n].reshape(-1)  # [B*n]
        cols = torch.arange(n, device=ids.device).repeat(b)
        real = packing.scatter  # [T] padded slots of the real tokens, row by row
        x = (t.token_embed(rows[real]) + F.embedding(cols[real], t.pos_embed)).to(t.proj.dtype)  # [T, W]
        x = stack(t.transformer, x, causal=True, packing=packing)  # [T, W]
        x = x[torch.cumsum(lengths, 0) - 1]  # [B, W]: each row's last real token, its end-of-text
    else:
        x = (t.token_embed(ids[:, :n]) + t.pos_embed[:n]).to(t.proj.dtype)  # [B, n, W]
        x = stack(t.transformer, x, causal=True)[torch.arange(b, device=ids.device), pos]  # [B, W]
    x = t.norm_final(x)
    return x @ t.proj if projected else x
