"""Optimizer plumbing for CLIP training: weight-decay groups, the warmup+cosine schedule, the scale clamp.

The recipe (reference §7): AdamW with decoupled weight decay 0.2 on the *weights* only, a linear warmup
then cosine decay to 0 over optimizer steps, and ``logit_scale`` clamped to [0, ln 100] after each step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "MAX_LOGIT_SCALE",
    "no_weight_decay",
    "param_groups",
    "split_names",
    "cosine_schedule",
    "clamp_logit_scale_",
]

MAX_LOGIT_SCALE = math.log(100.0)  # the paper's cap: the temperature never goes below 0.01

# Leaf parameter names that are embeddings or learned scalars. A substring match on the *leaf* name (the
# attribute holding the nn.Parameter) catches pos_embed, cls_token, positional_embedding, class_embedding,
# without catching ``patch_embed.weight``: that one is a Conv2d's kernel, a projection every reference
# decays (OpenAI's ``conv1``), even though its module is called "embed".
_NO_DECAY_LEAF_SUBSTRINGS = ("embed", "cls_token", "logit_scale", "logit_bias")


def no_weight_decay(module: nn.Module, leaf_name: str, param: torch.Tensor) -> bool:
    """Whether ``module.<leaf_name>`` (= ``param``) is exempt from weight decay, and why it should be.

    Decay is a prior that weights should be small. It is wrong for:
      - gains and biases, and norm weights: every ``ndim < 2`` tensor (shrinking a LayerNorm gain toward
        0 rescales the whole residual branch, it does not regularize it);
      - embedding tables and learned tokens (``nn.Embedding`` weights, ``pos_embed``, ``cls_token``, any
        leaf named ``*embed*``): each row is only touched when its token/position is used, so decay
        erodes rare rows between updates;
      - ``logit_scale`` / ``logit_bias``: learned scalars of the loss, where decay would pull the
        temperature toward 1.
    """
    if param.ndim < 2 or isinstance(module, nn.Embedding):
        return True
    return any(s in leaf_name for s in _NO_DECAY_LEAF_SUBSTRINGS)


def _named_leaves(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """(full name, owning module, leaf name, param) for each distinct parameter, first owner wins."""
    seen: set[int] = set()
    out = []
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights: one entry, or the optimizer would see it twice
                continue
            seen.add(id(p))
            out.append((f"{mod_name}.{leaf}" if mod_name else leaf, module, leaf, p))
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: the weights with ``weight_decay``, everything else with 0.

    Frozen parameters (``requires_grad=False``) are left out, so a locked tower costs no optimizer state.
    Empty groups are dropped. The groups hold only ``params`` and ``weight_decay``, so the optimizer's own
    defaults (lr, betas, eps) apply; :func:`split_names` gives the matching names for logging.

    Example:
        >>> groups = param_groups(model, 0.2)
        >>> opt = torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, module, leaf, p in _named_leaves(model):
        if not p.requires_grad:
            continue
        (no_decay if no_weight_decay(module, leaf, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def split_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) parameter names, in :func:`param_groups`'s order: for logs and tests."""
    decay, no_decay = [], []
    for name, module, leaf, p in _named_leaves(model):
        if p.requires_grad:
            (no_decay if no_weight_decay(module, leaf, p) else decay).append(name)
    return decay, no_decay


def cosine_schedule(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup, then cosine decay to 0, as a multiplier of each group's base lr.

    Step ``t`` (0-based count of optimizer steps taken; call ``scheduler.step()`` after each
    ``optimizer.step()``):
      - ``t < warmup``: lr = base * (t + 1) / warmup, so the very first step already moves (base/warmup);
      - else with e = t - warmup and E = total - warmup: lr = base * (1 + cos(pi * e / E)) / 2, reaching 0
        at ``t = total`` and staying 0 beyond it (a run that overshoots does not climb back up).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < warmup_steps or total_steps <= 0:
        raise ValueError(
            f"need 0 < total_steps >= warmup_steps, got total={total_steps}, warmup={warmup_steps}"
        )
    decay_steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        e = step - warmup_steps
        if decay_steps == 0 or e >= decay_steps:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * e / decay_steps))

    return LambdaLR(optimizer, factor)


def clamp_logit_scale_(model: nn.Module | torch.Tensor, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Clamp ``logit_scale`` (the log of the scale) to [0, ``max_value``] in place; call after each step.

    Without the cap the scale keeps growing and the softmax saturates (the paper clips it at 100; the lower
    bound 0 keeps the scale >= 1). Accepts the model (any parameter whose leaf name is ``logit_scale``,
    wrappers such as DDP included) or the parameter itself. Runs under ``no_grad`` so the clamp is not
    recorded in autograd; the parameter's identity and optimizer state are untouched.
    """
    if isinstance(model, torch.Tensor):
        targets = [model]
    else:
        targets = [p for _, _, leaf, p in _named_leaves(model) if leaf == "logit_scale"]
    if not targets:
        raise ValueError("model has no parameter named 'logit_scale' to clamp")
    with torch.no_grad():
        for p in targets:
            p.clamp_(0.0, max_value)
