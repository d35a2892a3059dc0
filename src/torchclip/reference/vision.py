"""Image towers: the ViT and the ModifiedResNet of the CLIP paper (reference §1.2-1.3, init §1.7).

Each tower's ``forward(pixels, projected=True)`` returns the image embedding [B, E]; with
``projected=False`` the representation just before the projection (the paper's linear-probe features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPConfig
from .layers import LayerNorm, Transformer

__all__ = ["VisionTransformer", "ModifiedResNet", "AttentionPool2d", "Bottleneck", "build_vision", "check_pixels"]


def check_pixels(pixels: torch.Tensor, image_size: int) -> None:
    """Raise one clear error unless ``pixels`` is a float [B, 3, R, R] batch at the tower's resolution."""
    if not (pixels.is_floating_point() and pixels.dim() == 4 and tuple(pixels.shape[1:]) == (3, image_size, image_size)):
        raise ValueError(
            f"expected pixels as a float tensor [B, 3, {image_size}, {image_size}] (R = {image_size}), got "
            f"{pixels.dtype} {list(pixels.shape)}: preprocess images with the transform torchclip.load returns")


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

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The transformer's input: [B, 1 + g*g, W], class token first, grid row-major.

        Training with ``patch_dropout`` keeps the class token and a random share of patches per image.
        """
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # [B, g*g, W]
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # [B, 1+g*g, W]
        if self.training and self.patch_dropout > 0:
            b, n1, w = x.shape
            keep = max(1, round((n1 - 1) * (1.0 - self.patch_dropout)))
            idx = torch.rand(b, n1 - 1, device=x.device).argsort(dim=1)[:, :keep] + 1  # [B, k]
            x = torch.cat([x[:, :1], x.gather(1, idx.unsqueeze(-1).expand(b, keep, w))], dim=1)  # [B, 1+k, W]
        return self.norm_pre(x)

    def forward(self, pixels: torch.Tensor, projected: bool = True) -> torch.Tensor:
        check_pixels(pixels, self.image_size)
        x = self.norm_post(self.transformer(self.embed(pixels))[:, 0])  # [B, W]
        return x @ self.proj.to(x.dtype) if projected else x  # [B, E]


class Downsample(nn.Module):
    """Anti-aliased shortcut: AvgPool(stride) -> 1x1 conv -> BN."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(inp, out, 1, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.pool(F.relu(self.bn2(self.conv2(y))))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


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
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.pool(F.relu(self.bn3(self.conv3(x))))


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

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] feature map -> [B, 1+h*w, C] tokens: the mean first, positions added to all."""
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # mean before positions
        return x + self.pos_embed.to(x.dtype)

    def forward(self, x: torch.Tensor, projected: bool = True) -> torch.Tensor:
        x = self.tokens(x)  # [B, 1+h*w, C]
        b, _, c = x.shape
        dh = c // self.heads
        q = self.q_proj(x[:, :1]).view(b, 1, self.heads, dh).transpose(1, 2)  # [B, H, 1, Dh]
        k = self.k_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)  # [B, H, 1+h*w, Dh]
        v = self.v_proj(x).view(b, -1, self.heads, dh).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c)  # [B, C]
        return self.out_proj(y) if projected else y  # [B, E]


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
        std = inp**-0.5
        for lin in (self.attn_pool.q_proj, self.attn_pool.k_proj, self.attn_pool.v_proj, self.attn_pool.out_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in self.stages:
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity

    def forward(self, pixels: torch.Tensor, projected: bool = True) -> torch.Tensor:
        check_pixels(pixels, self.image_size)
        x = self.stem(pixels.to(self.stem.conv1.weight.dtype))
        for stage in self.stages:
            x = stage(x)
        return self.attn_pool(x, projected)  # x: [B, 32w, R/32, R/32]


def build_vision(cfg: CLIPConfig) -> nn.Module:
    return ModifiedResNet(cfg) if cfg.vision.is_resnet else VisionTransformer(cfg)
