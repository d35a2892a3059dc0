"""The CLIP model users get: the reference model, with the CPU fast path chosen per call.

This is the one place the two paths meet: ``encode_image`` and ``encode_text`` ask ``fast.applies``
(eval mode, CPU, no autograd, no tracing or compiling, no hooks on the tower) and otherwise run the
reference towers. Both give the same numbers up to float rounding; the state dict is the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fast, reference
from .reference import CLIPOutput

__all__ = ["CLIP", "CLIPOutput"]


class CLIP(reference.CLIP):
    __doc__ = reference.CLIP.__doc__

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False, *, projected: bool = True) -> torch.Tensor:
        """[B, 3, R, R] normalized float pixels -> [B, E] features ([B, W] before the projection)."""
        if fast.applies(self.visual, pixels):
            x = fast.encode_image(self.visual, pixels, projected)
        else:
            x = self.visual(pixels, projected=projected)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False, *, projected: bool = True) -> torch.Tensor:
        """[B, L <= context] token ids -> [B, E] features, pooled at each row's first end-of-text id."""
        if fast.applies(self.text, ids):
            x = fast.encode_text(self.text, ids, projected)
        else:
            x = self.text(ids, projected=projected)
        return F.normalize(x, dim=-1) if normalize else x

