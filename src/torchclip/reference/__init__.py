"""The reference CLIP: only the math, one ``forward`` per module, configured by ``torchclip.config``.

It imports nothing from the rest of torchclip but the config; the CPU fast path (``torchclip.fast``)
reads these modules' parameters, and ``torchclip.model.CLIP`` chooses between the two.
"""

from .layers import MLP, Attention, Block, LayerNorm, QuickGELU, Transformer, make_activation
from .model import CLIP, CLIPOutput
from .text import TextTransformer
from .vision import AttentionPool2d, ModifiedResNet, VisionTransformer, build_vision, check_pixels

__all__ = ["CLIP", "CLIPOutput", "LayerNorm", "QuickGELU", "Attention", "MLP", "Block", "Transformer",
           "make_activation", "VisionTransformer", "ModifiedResNet", "AttentionPool2d", "TextTransformer",
           "build_vision", "check_pixels"]
