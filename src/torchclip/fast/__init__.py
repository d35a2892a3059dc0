"""The CPU inference path: the reference towers' numbers (up to float rounding) with fewer FLOPs, fewer
memory passes and oneDNN's kernels on x86.

It reads the parameters of ``torchclip.reference`` modules and never changes them; derived tensors
(folded BatchNorm, its oneDNN packs) are cached on the modules as plain attributes, keyed by the source
tensors' versions, and are no state. ``applies`` says when it may run: ``torchclip.model.CLIP`` asks it
once per call, the only place the two paths meet.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from ..reference.layers import static_graph
from ..reference.text import TextTransformer
from ..reference.vision import ModifiedResNet, VisionTransformer
from .kernels import onednn_enabled
from .text import encode_text
from .vision import encode_resnet, encode_vit

__all__ = ["applies", "encode", "plain_ops", "observed", "onednn_enabled"]

_PLAIN: contextvars.ContextVar[bool] = contextvars.ContextVar("torchclip_plain_ops", default=False)
_TOWERS = (VisionTransformer, ModifiedResNet, TextTransformer)


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Within the block every call runs the reference modules (``applies`` is False)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


def observed(module: nn.Module) -> bool:
    """Whether a forward (pre-)hook sits on ``module`` or a submodule: the fast path calls none of them as
    modules, so such a hook would silently never fire.

    Global hooks do not count: they belong to tools that follow whatever modules run (``FlopCounterMode``'s
    module tracker), which must measure the fast path, not switch it off.
    """
    stack = [module]  # a plain walk: much cheaper than module.modules() on a deep tower
    while stack:
        m = stack.pop()
        if m._forward_hooks or m._forward_pre_hooks:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


def applies(tower: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``tower`` (a reference tower, not a subclass) may run on the fast path for input ``x``.

    Only in eval mode, on CPU, when nothing records autograd history, traces, compiles or exports (they
    need the modules' own ops), outside ``plain_ops()``, and with no hook on the tower's modules.
    """
    return (type(tower) in _TOWERS and not tower.training and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not _PLAIN.get() and not static_graph() and not observed(tower))


def encode(tower: nn.Module, x: torch.Tensor, projected: bool = True) -> torch.Tensor:
    """``tower(x, projected)`` for a tower ``applies`` accepted."""
    if isinstance(tower, VisionTransformer):
        return encode_vit(tower, x, projected)
    if isinstance(tower, ModifiedResNet):
        return encode_resnet(tower, x, projected)
    return encode_text(tower, x, projected)
