"""The CLIP model users get: the reference model, with the CPU fast path chosen per call.

This is the one place the two paths meet: ``encode_image`` and ``encode_text`` run each tower through
``run_tower``, which asks ``fast.applies`` (eval mode, CPU, no autograd, no tracing or compiling, no hooks
on the tower) and otherwise runs the reference tower. Both give the same numbers up to float rounding; the
state dict is the reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from . import fast, reference
from .reference import CLIPOutput

__all__ = ["CLIP", "CLIPOutput"]


class CLIP(reference.CLIP):
    __doc__ = reference.CLIP.__doc__

    def run_tower(self, tower: nn.Module, x: torch.Tensor, projected: bool) -> torch.Tensor:
        """The fast path where ``fast.applies``, else the reference tower."""
        return fast.encode(tower, x, projected) if fast.applies(tower, x) else tower(x, projected=projected)
