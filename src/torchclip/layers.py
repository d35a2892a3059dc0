"""Building blocks shared by both towers: fp32 LayerNorm, QuickGELU, attention and the pre-LN block.

Attention goes through ``F.scaled_dot_product_attention`` with one fused ``qkv`` projection (a single
matmul instead of three), which is what makes small batches fast on a CPU. Parameter names here are the
public layout of torchclip checkpoints; foreign layouts are mapped onto them in ``formats.py``.

Inference (no autograd recording) takes a few shortcuts that compute the same numbers with fewer memory
passes: residual adds and the QuickGELU product write into tensors the block has just created. Causal
stacks also accept *packed* rows (``Packing``): the tokens of rows of different lengths back to back, so
every projection and MLP runs on real tokens only, and only attention sees a padded layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LayerNorm", "QuickGELU", "Attention", "MLP", "Block", "Transformer", "Packing", "make_activation",
           "fast_inference"]


def fast_inference() -> bool:
    """True when nothing records autograd history, traces or compiles: in-place and cached shortcuts are safe.

    Tracing (ONNX export) and compilation see the plain ops, so an exported graph never bakes in a batch
    split or a cached tensor.
    """
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not torch.compiler.is_compiling()


@dataclass(frozen=True)
class Packing:
    """How rows of different lengths lie packed in a ``[T, D]`` tensor and padded for attention.

    Row r holds ``lengths[r]`` tokens; the packed tensor lists row 0's tokens, then row 1's, and so on.
    ``gather`` ([B*n]) gives, for every slot of the padded ``[B, n]`` layout, the packed token to put there:
    a row's own tokens, then copies of its last one. Under a causal mask a slot only sees earlier slots of
    its row, so the copies never reach a real token's output. ``scatter`` ([T]) lists the padded slots of
    the real tokens, in packed order.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    batch: int
    length: int

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, length: int | None = None) -> Packing:
        n = int(lengths.max()) if length is None else length
        b = lengths.shape[0]
        cols = torch.arange(n, device=lengths.device)
        starts = torch.cumsum(lengths, 0) - lengths  # [B] packed index of each row's first token
        gather = (starts[:, None] + torch.minimum(cols, lengths[:, None] - 1)).flatten()
        scatter = (cols < lengths[:, None]).flatten().nonzero().squeeze(1)
        return cls(gather, scatter, b, n)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, as OpenAI's reference does.

    Half-precision statistics over 768-1024 channels lose enough precision to change features; the
    parameters stay fp32 too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # fp16/bf16 inputs (or mixed parameter dtypes): normalize in at least fp32, then cast back.
        ct = torch.promote_types(torch.promote_types(x.dtype, self.weight.dtype), torch.float32)
        y = F.layer_norm(x.to(ct), self.normalized_shape, self.weight.to(ct), self.bias.to(ct), self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation every OpenAI checkpoint was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        # Same products (multiplication commutes exactly), one temporary instead of three.
        return torch.sigmoid_(1.702 * x).mul_(x)


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (rows ordered q, k, v)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Packing | None = None) -> torch.Tensor:
        """``x``: [B, N, D], or packed [T, D] rows described by ``packing`` (causal only)."""
        qkv = self.qkv(x)
        if packing is None:
            b, n, d = x.shape  # [B, N, D]
        else:
            if not causal:
                raise ValueError("packed rows need causal attention (padding would be attended to)")
            (_, d), b, n = x.shape, packing.batch, packing.length
            qkv = qkv.index_select(0, packing.gather)  # [B*n, 3D]
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, Dh]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, N, Dh]
        y = y.transpose(1, 2)  # [B, N, H, Dh]: SDPA's CPU kernels already lay it out this way, so no copy
        if packing is None:
            return self.proj(y.reshape(b, n, d))
        return self.proj(y.reshape(b * n, d).index_select(0, packing.scatter))  # [T, D]


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN residual block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        self.norm1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Packing | None = None) -> torch.Tensor:
        if not fast_inference():
            x = x + self.attn(self.norm1(x), causal=causal, packing=packing)
            return x + self.mlp(self.norm2(x))
        # The branch outputs are fresh tensors: add the residual into them (a + x == x + a exactly).
        x = self.attn(self.norm1(x), causal=causal, packing=packing).add_(x)
        return self.mlp(self.norm2(x)).add_(x)


class Transformer(nn.Module):
    """A stack of blocks, batch-first ([B, N, D]), with optional gradient checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, activation) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Packing | None = None) -> torch.Tensor:
        """``x``: [B, N, D], or packed rows [T, D] with their ``packing`` (causal stacks only)."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, packing, use_reentrant=False)
            else:
                x = block(x, causal=causal, packing=packing)
        return x
