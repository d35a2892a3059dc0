"""Image towers: the ViT and the ModifiedResNet of the CLIP paper (reference §1.2-1.3, init §1.7).

Inference (``layers.fast_inference()``) runs the same maths in a CPU-friendlier way: the ViT's patch
embedding as one matmul over unfolded patches, large batches in cache-sized chunks, and the ResNet in
channels-last layout with each eval-mode BatchNorm folded into the conv before it (cached, and rebuilt
whenever a weight or running statistic changes), ReLUs and residual adds in place; on x86 the folded
weights are pre-packed for oneDNN per input shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import memory
from .config import CLIPConfig
from .layers import (
    LayerNorm,
    Transformer,
    attend_one_query,
    derived_cache,
    fast_inference,
    hooks_see_plain_ops,
    inference_linear,
    observed,
    onednn_eligible,
    tensor_key,
)

__all__ = ["VisionTransformer", "ModifiedResNet", "AttentionPool2d", "build_vision"]


class VisionTransformer(nn.Module):
    """ViT with a class token, ``norm_pre`` before the blocks and ``norm_post`` on the class token only."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        v = cfg.vision
        assert v.patch_size is not None
        self.image_size = v.image_size
        self.patch_size = v.patch_size
        self.patch_dropout = v.patch_dropout
        w = v.width
        scale = w**-0.5
        self.patch_embed = nn.Conv2d(3, w, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.cls_token = nn.Parameter(scale * torch.randn(w))
        self.pos_embed = nn.Parameter(scale * torch.randn(v.grid_size**2 + 1, w))
        self.norm_pre = LayerNorm(w)
        self.transformer = Transformer(w, v.layers, v.heads, v.mlp_ratio, cfg.activation)
        self.norm_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))
        # nn.MultiheadAttention's defaults, which the paper's ViT keeps: xavier in-projection, zero biases.
        for block in self.transformer.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.proj.bias)

        # Inference splits larger batches into chunks of at most this many tokens, so that the largest
        # activation (the MLP's hidden layer, fp32) stays under 24 MiB. Bigger blocks are fresh mmaps for
        # glibc's allocator (its threshold tops out at 32 MiB) and page-fault on every touch: ViT-B/32 at
        # batch 64 took ~245k faults per forward in one chunk and ~5k in two, 1.06-1.10x faster
        # (benchmarks/results_encode.md). Set the attribute to change it.
        self.chunk_tokens = max(self.pos_embed.shape[0], (24 << 20) // (4 * int(w * v.mlp_ratio)))

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch embedding: [B, 3, R, R] -> [B, g*g, W], row-major grid."""
        w = self.patch_embed.weight  # [W, 3, P, P]
        pixels = pixels.to(w.dtype)
        b, c, h, wd = pixels.shape
        p = self.patch_size
        if not fast_inference() or h % p or wd % p:
            return self.patch_embed(pixels).flatten(2).transpose(1, 2)
        # A stride-P PxP conv is a matmul over unfolded patches; faster on CPU than a conv with 3 channels.
        gh, gw = h // p, wd // p
        patches = memory.empty(b * gh * gw, c * p * p, like=pixels)  # [B*gh*gw, 3*P*P]
        patches.view(b, gh, gw, c, p, p).copy_(pixels.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5))
        return inference_linear(patches.view(b, gh * gw, c * p * p), w.reshape(w.shape[0], -1),
                                owner=self.patch_embed)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """All output tokens before ``norm_post``: [B, 1 + g*g, W] (class token first)."""
        return self.transformer(self._tokens_in(pixels))

    def _tokens_in(self, pixels: torch.Tensor) -> torch.Tensor:
        """The transformer's input: [B, 1 + g*g, W] (fewer tokens under patch dropout in training)."""
        x = self.embed_patches(pixels)  # [B, g*g, W]
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # [B, 1+g*g, W]
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)  # [B, 1+k, W]
        return self.norm_pre(x)

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the class token and a random ``1 - patch_dropout`` share of patches, per image."""
        b, n1, w = x.shape
        n = n1 - 1
        keep = max(1, round(n * (1.0 - self.patch_dropout)))
        idx = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep] + 1  # [B, k], draws from torch's RNG
        patches = x.gather(1, idx.unsqueeze(-1).expand(b, keep, w))  # [B, k, W]
        return torch.cat([x[:, :1], patches], dim=1)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if fast_inference():  # the last block only for the class token, the only output used
            x = self.transformer.forward_first_token(self._tokens_in(pixels))  # [B, W]
        else:
            x = self.forward_tokens(pixels)[:, 0]  # [B, W]
        return self.norm_post(x) @ self.proj.to(x.dtype)  # [B, E]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # norm_post is called as a module on both paths (evaluation's probe features hook it, once per chunk).
        with hooks_see_plain_ops(self, exempt=(self.norm_post,)):
            return _in_chunks(self._forward, pixels, max(1, self.chunk_tokens // self.pos_embed.shape[0]))


class Downsample(nn.Module):
    """Anti-aliased shortcut: AvgPool(stride) -> 1x1 conv -> BN."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(inp, out, 1, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv_bn(self.conv, self.bn, self.pool(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck whose stride is an AvgPool after the 3x3 conv (the paper's anti-aliasing)."""

    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = Downsample(inp, out, stride) if stride > 1 or inp != out else None

    def forward(self, x: torch.Tensor, consume: bool = False) -> torch.Tensor:
        """``consume`` (inference): ``x`` is no longer needed by anyone, so the output may overwrite it."""
        y = _conv_bn(self.conv1, self.bn1, x, relu=True)
        y = _conv_bn(self.conv2, self.bn2, y, relu=True)
        y = self.pool(y)
        if not fast_inference():
            return F.relu(_conv_bn(self.conv3, self.bn3, y) + (x if self.downsample is None else self.downsample(x)))
        if self.downsample is None and not consume:
            return _conv_bn(self.conv3, self.bn3, y).add_(x).relu_()  # a fresh tensor: y + x == x + y exactly
        # The shortcut is ours (a fresh downsample, or a consumed input): conv3, the residual add and the
        # ReLU write into it in one pass. No new block of the output's size is allocated, and at 224 px
        # those (25-50 MB) page-fault on first touch: RN50's 64->256 expand ran 3x faster this way.
        shortcut = x if self.downsample is None else self.downsample(x)
        return _conv_bn_add_relu_(self.conv3, self.bn3, y, shortcut)


class Stem(nn.Module):
    """Three 3x3 convs (the first strided) and a 2x2 average pool, instead of one 7x7 conv + max pool."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_bn(self.conv1, self.bn1, x, relu=True)
        x = _conv_bn(self.conv2, self.bn2, x, relu=True)
        x = _conv_bn(self.conv3, self.bn3, x, relu=True)
        return self.pool(x)


class AttentionPool2d(nn.Module):
    """One attention layer whose query is the mean token, replacing global average pooling."""

    def __init__(self, grid: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.pos_embed = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, 1+h*w, C], mean before positions
        x = x + self.pos_embed.to(x.dtype)
        if fast_inference():  # keys and values never projected: layers.attend_one_query
            q = F.linear(x[:, 0], self.q_proj.weight, self.q_proj.bias)  # [B, C]
            y = attend_one_query(q, x, self.k_proj.weight, self.v_proj.weight, self.v_proj.bias, self.heads)
        else:
            dh = c // self.heads
            q = self.q_proj(x[:, :1]).view(b, 1, self.heads, dh).transpose(1, 2)  # [B, H, 1, Dh]
            k = self.k_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)  # [B, H, 1+h*w, Dh]
            v = self.v_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)  # [B, C]
        # A module call: evaluation's probe features hook ``out_proj``'s input (B rows, no gain from oneDNN).
        return self.out_proj(y)  # [B, E]


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        v = cfg.vision
        assert isinstance(v.layers, tuple)
        w = v.width
        self.image_size = v.image_size
        self.stem = Stem(w)
        stages = []
        inp = w
        for s, depth in enumerate(v.layers):
            planes = w * 2**s
            stride = 1 if s == 0 else 2
            blocks = [Bottleneck(inp, planes, stride)]
            inp = planes * Bottleneck.expansion
            blocks += [Bottleneck(inp, planes, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.attn_pool = AttentionPool2d(v.grid_size, inp, v.heads, cfg.embed_dim)
        self._init_weights(inp)

    def _init_weights(self, dim: int) -> None:
        std = dim**-0.5
        for lin in (self.attn_pool.q_proj, self.attn_pool.k_proj, self.attn_pool.v_proj, self.attn_pool.out_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in self.stages:
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity

    # Inference splits larger batches into chunks of this many images; None: as many as keep the largest
    # activation (the stem's output, width x R/2 x R/2) under 30 MiB. Bigger blocks are fresh mmaps for
    # glibc's allocator (its threshold tops out at 32 MiB) that page-fault on first touch: RN50 at batch 32
    # took 130k minor faults per forward in chunks of 16 and none in chunks of 8, 1.05x faster
    # (benchmarks/results_encode.md). Set the attribute to override.
    chunk_images: int | None = None

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last feature map before attention pooling: [B, 32w, R/32, R/32]."""
        x = pixels.to(self.stem.conv1.weight.dtype)
        if fast_inference():
            # oneDNN's convs are fastest on NHWC; every op below keeps the layout, the values are the same.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        if not (fast_inference() and not observed(self.stages)):
            for stage in self.stages:
                x = stage(x)
            return x
        # Inference with no hook that could hold a block's input or output: each block may overwrite its
        # input (the previous block's output, read by nobody else) with its own output.
        for stage in self.stages:
            for block in stage:
                x = block(x, consume=True)
        return x

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.attn_pool(self.forward_features(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        chunk = self.chunk_images
        if chunk is None:
            width = self.stem.conv3.out_channels
            per_image = width * (pixels.shape[-2] // 2) * (pixels.shape[-1] // 2) * pixels.element_size()
            chunk = max(1, (30 << 20) // max(1, per_image))
        # out_proj is called as a module on both paths (evaluation's probe features pre-hook it, per chunk).
        with hooks_see_plain_ops(self, exempt=(self.attn_pool.out_proj,)):
            return _in_chunks(self._forward, pixels, chunk)


def _in_chunks(forward: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """``forward(pixels)``, in inference over chunks of ``chunk`` images (images never interact)."""
    n = pixels.shape[0]
    if n <= chunk or not fast_inference():
        return forward(pixels)
    parts = -(-n // chunk)
    return torch.cat([forward(p) for p in pixels.split(-(-n // parts))])  # equal-sized chunks


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` followed by eval-mode ``bn`` as one conv, cached on ``bn``.

    The cache key holds each source tensor's identity and version counter, so loading a state dict,
    an optimizer step or ``.to()`` rebuilds it; it is a plain attribute, never part of the state dict.
    """
    sources = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    keys = tuple(tensor_key(t) for t in sources)
    key = None if None in keys else keys + (bn.eps,)  # None: inference tensors, never cached
    cache = derived_cache(bn, "_folded")
    cached_key, cached = cache.entry
    if key is not None and cached_key == key:
        return cached
    with torch.no_grad():  # in fp32 whatever the parameters' dtype, rounded once at the end
        scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)  # eval batch_norm's factor
        bias = (bn.bias.float() - bn.running_mean.float() * scale).to(conv.weight.dtype)
        weight = (conv.weight.float() * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype)
        weight = weight.contiguous(memory_format=torch.channels_last)
    if key is not None:
        cache.entry = (key, (weight, bias))
    return weight, bias


def _packed(conv: nn.Conv2d, bn: nn.BatchNorm2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The folded ``weight`` pre-packed in oneDNN's blocked layout for inputs shaped exactly like ``x``.

    Packing saves the per-call weight reorder: RN50 1.16-1.24x at batch 1, 1.09x at batch 64 (chunks of
    8) and 1.05x at batch 8, with identical results (benchmarks/results_encode.md, sessions 3 and 8). A
    weight packed for one input shape runs others slower than the plain layout (0.61x at batch 2, 0.86x
    at batch 8 with one pack shared by every size), so packs are per input shape, batch included; the two
    most recent shapes are kept (a large batch's equal-sized chunks and one other size), each a copy of
    the folded weight.
    """
    shape = tuple(x.shape)
    cache = derived_cache(bn, "_packed")
    _, entries = cache.entry  # ((shape, packed, weight), ...), most recent first
    hit = next((e for e in entries if e[0] == shape and e[2] is weight), None)  # a rebuilt fold is a new tensor
    if hit is None:
        with torch.no_grad():
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                list(shape))
        hit = (shape, packed, weight)  # holding weight keeps its identity unambiguous
    if not entries or entries[0] is not hit:
        kept = tuple(e for e in entries if e is not hit and e[2] is weight)[:1]
        cache.entry = ((hit[0],) + tuple(e[0] for e in kept), (hit,) + kept)
    return hit[1]


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``bn(conv(x))``, then ReLU if asked; in eval-mode inference as one conv with the BN folded in."""
    if not (fast_inference() and _foldable(bn)):
        y = bn(conv(x))
        return F.relu(y) if relu else y
    weight, bias = _folded(conv, bn)
    if onednn_eligible(x, weight):  # pre-packed weight, ReLU fused into the conv
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), _packed(conv, bn, weight, x), bias,
            list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "relu" if relu else "none",
            [], "")
    y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.relu_() if relu else y


def _conv_bn_add_relu_(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual = relu(bn(conv(x)) + residual)``, in place where oneDNN can fuse it (inference only)."""
    if (_foldable(bn) and onednn_eligible(x, conv.weight) and residual.dtype == conv.weight.dtype
            and residual.is_contiguous(memory_format=torch.channels_last)):
        weight, bias = _folded(conv, bn)
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x.contiguous(memory_format=torch.channels_last), _packed(conv, bn, weight, x), bias,
            list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "add", 1.0, "relu", [], "")
    return residual.add_(_conv_bn(conv, bn, x)).relu_()


def _foldable(bn: nn.BatchNorm2d) -> bool:
    """Eval-mode BatchNorm with affine parameters and running statistics: foldable into the conv before it."""
    return not bn.training and bn.affine and bn.track_running_stats


def build_vision(cfg: CLIPConfig) -> nn.Module:
    return ModifiedResNet(cfg) if cfg.vision.is_resnet else VisionTransformer(cfg)
