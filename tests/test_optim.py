"""Optimizer helpers: which parameters decay, the lr at known steps, and the logit_scale clamp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from torchclip.optim import (
    MAX_LOGIT_SCALE,
    clamp_logit_scale_,
    cosine_schedule,
    param_groups,
    split_names,
)


class _Tower(nn.Module):
    """A miniature of every parameter kind a CLIP tower has, named as this project names them."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, kernel_size=2, stride=2, bias=False)  # a projection: decays
        self.cls_token = nn.Parameter(torch.randn(8))
        self.pos_embed = nn.Parameter(torch.randn(5, 8))  # 2-D, but an embedding: no decay
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.proj = nn.Parameter(torch.randn(8, 4))  # 2-D projection: decays


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = _Tower()
        self.token_embed = nn.Embedding(10, 8)
        self.positional_embedding = nn.Parameter(torch.randn(6, 8))  # OpenAI's name
        self.text_projection = nn.Parameter(torch.randn(8, 4))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


DECAYED = ["visual.patch_embed.weight", "visual.fc.weight", "visual.proj", "text_projection"]
NOT_DECAYED = [
    "visual.cls_token",
    "visual.pos_embed",
    "visual.ln.weight",
    "visual.ln.bias",
    "visual.fc.bias",
    "token_embed.weight",
    "positional_embedding",
    "logit_scale",
    "logit_bias",
]


def test_which_parameters_decay() -> None:
    decay, no_decay = split_names(_Model())
    assert sorted(decay) == sorted(DECAYED)
    assert sorted(no_decay) == sorted(NOT_DECAYED)


def test_param_groups_match_names_and_skip_frozen() -> None:
    model = _Model()
    groups = param_groups(model, 0.2)
    named = dict(model.named_parameters())
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    assert [id(p) for p in groups[0]["params"]] == [id(named[n]) for n in split_names(model)[0]]
    assert [id(p) for p in groups[1]["params"]] == [id(named[n]) for n in split_names(model)[1]]
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(model.frozen.weight) not in in_groups and id(model.frozen.bias) not in in_groups
    assert len(in_groups) == len(DECAYED) + len(NOT_DECAYED)  # each parameter exactly once


def test_tied_weights_appear_once_and_empty_groups_are_dropped() -> None:
    lin = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(lin, lin)
    groups = param_groups(model, 0.1)
    assert len(groups) == 1 and len(groups[0]["params"]) == 1
    only_gains = param_groups(nn.LayerNorm(4), 0.1)  # nothing decays: no empty decay group
    assert len(only_gains) == 1 and only_gains[0]["weight_decay"] == 0.0 and len(only_gains[0]["params"]) == 2


def test_adamw_decays_only_the_decay_group() -> None:
    """With zero gradients AdamW's only update is decoupled decay: p *= 1 - lr * wd, on weights only."""
    model = _Model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=0.1)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    for n in DECAYED:
        torch.testing.assert_close(after[n].detach(), before[n] * (1 - 0.1 * 0.2))
    for n in NOT_DECAYED:
        assert torch.equal(after[n].detach(), before[n]), n


def _lrs(warmup: int, total: int, steps: int, base: float = 1.0) -> list[float]:
    """lr used by each of the first ``steps`` optimizer steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = cosine_schedule(opt, warmup, total)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_known_values() -> None:
    lrs = _lrs(warmup=4, total=12, steps=16, base=2.0)
    # warmup: base * (t + 1) / 4
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # cosine over E = 8 post-warmup steps, e = t - 4
    assert lrs[4] == pytest.approx(2.0)  # e = 0
    assert lrs[6] == pytest.approx(2.0 * (1 + math.cos(math.pi * 2 / 8)) / 2)
    assert lrs[8] == pytest.approx(1.0)  # e = E/2: half the base
    assert lrs[11] == pytest.approx(2.0 * (1 + math.cos(math.pi * 7 / 8)) / 2)
    assert lrs[12:] == [0.0] * 4  # e >= E: zero, and it stays there
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # monotone after the peak


def test_cosine_schedule_without_warmup_and_per_group_bases() -> None:
    assert _lrs(warmup=0, total=4, steps=5) == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                              0.5 + 0.5 * math.cos(3 * math.pi / 4), 0.0])  # fmt: skip
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    cosine_schedule(opt, warmup_steps=10, total_steps=20)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])  # both groups at step 0


def test_cosine_schedule_rejects_bad_lengths() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        cosine_schedule(opt, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError):
        cosine_schedule(opt, warmup_steps=-1, total_steps=5)


@pytest.mark.parametrize(("start", "expected"), [(10.0, MAX_LOGIT_SCALE), (-1.0, 0.0), (2.0, 2.0)])
def test_clamp_logit_scale(start: float, expected: float) -> None:
    model = _Model()
    with torch.no_grad():
        model.logit_scale.fill_(start)
    param, logit_bias = model.logit_scale, model.logit_bias.detach().clone()
    clamp_logit_scale_(model)
    assert model.logit_scale is param and model.logit_scale.requires_grad  # same tensor, still a leaf
    assert model.logit_scale.item() == pytest.approx(expected)
    assert torch.equal(model.logit_bias.detach(), logit_bias)  # only logit_scale is touched
    assert math.exp(model.logit_scale.item()) <= 100.0 + 1e-4


def test_clamp_logit_scale_through_a_wrapper_and_on_a_tensor() -> None:
    wrapper = nn.Module()
    wrapper.module = _Model()  # as DistributedDataParallel nests it
    with torch.no_grad():
        wrapper.module.logit_scale.fill_(7.0)
    clamp_logit_scale_(wrapper)
    assert wrapper.module.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    t = nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale_(t, max_value=3.0)
    assert t.item() == 3.0
    with pytest.raises(ValueError, match="logit_scale"):
        clamp_logit_scale_(nn.Linear(2, 2))
