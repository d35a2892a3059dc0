"""The reference transformer's blocks for inference: residual adds inside the projections, QuickGELU as
one in-place SiLU, packed rows for causal stacks, and a last block computed for position 0 only.

Each function reads a ``torchclip.reference`` module's parameters and computes that module's output
(up to float rounding: products are associated differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..reference.layers import MLP, Attention, Block, QuickGELU, Transformer
from .kernels import (
    attend_one_query,
    gemm_into_residual,
    inference_linear,
    same_dtype_no_autocast,
    uses_onednn,
)

__all__ = ["Packing", "attention", "mlp", "block", "stack", "stack_first_token"]


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


def attention(attn: Attention, x: torch.Tensor, residual: torch.Tensor, causal: bool = False,
              packing: Packing | None = None) -> torch.Tensor:
    """``residual + attn(x)``; ``x``: [B, N, D], or packed [T, D] rows described by ``packing`` (causal)."""
    qkv = inference_linear(x, attn.qkv.weight, attn.qkv.bias)
    if packing is None:
        b, n, d = x.shape  # [B, N, D]
    else:
        if not causal:
            raise ValueError("packed rows need causal attention (padding would be attended to)")
        (_, d), b, n = x.shape, packing.batch, packing.length
        qkv = qkv.index_select(0, packing.gather)  # [B*n, 3D]
    q, k, v = qkv.view(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, Dh]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, N, Dh]
    y = y.transpose(1, 2)  # [B, N, H, Dh]: SDPA's CPU kernels already lay it out this way, so no copy
    y = y.reshape(b, n, d) if packing is None else y.reshape(b * n, d).index_select(0, packing.scatter)
    return inference_linear(y, attn.proj.weight, attn.proj.bias, residual)  # like x


def attention_first_query(attn: Attention, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + attn(x)[:, 0]`` ([B, D]), non-causal: query, attention row and output projection for
    position 0 alone, keys and values never projected (``attend_one_query``)."""
    d = x.shape[-1]  # x: [B, N, D]
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = inference_linear(x[:, 0], w[:d], None if bias is None else bias[:d])  # [B, D]
    y = attend_one_query(q, x, w[d:2 * d], w[2 * d:], None if bias is None else bias[2 * d:], attn.heads)
    return inference_linear(y, attn.proj.weight, attn.proj.bias, residual)


def mlp(m: MLP, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + m(x)``, the residual added inside ``fc2``'s product."""
    if uses_onednn(x, m.fc1.weight):
        return _mlp_onednn(m, x, residual)
    if isinstance(m.act, QuickGELU) and same_dtype_no_autocast(x, m.fc1.weight, residual):
        return _mlp_quick_gelu_gemm(m, x, residual)
    h = m.act(inference_linear(x, m.fc1.weight, m.fc1.bias))  # [..., hidden]
    return inference_linear(h, m.fc2.weight, m.fc2.bias, residual)


def _mlp_onednn(m: MLP, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """fc1 on oneDNN, the activation in place on its output (oneDNN's fused post-ops were slower), fc2
    adding the residual.

    QuickGELU runs as one in-place SiLU: ``silu(1.702 h) = 1.702 quick_gelu(h)``, so fc1's input and bias
    are scaled by 1.702 (the input is narrower than the hidden layer) and one pass divides.
    """
    x2, b1 = x.reshape(-1, x.shape[-1]).contiguous(), m.fc1.bias  # [M, D]
    w1 = m.fc1.weight.contiguous()
    pointwise = torch.ops.mkldnn._linear_pointwise
    if isinstance(m.act, QuickGELU):
        h = pointwise(x2 * 1.702, w1, None if b1 is None else b1 * 1.702, "none", [], "")  # [M, hidden]
        F.silu(h, inplace=True).mul_(1 / 1.702)  # quick_gelu(fc1(x))
    else:
        h = pointwise(x2, w1, b1, "none", [], "")  # [M, hidden]
        if isinstance(m.act, nn.GELU):
            torch.ops.aten.gelu_(h, approximate=m.act.approximate)
        else:
            h = m.act(h)
    res2 = residual.reshape(-1, residual.shape[-1])  # [M, D]
    return inference_linear(h, m.fc2.weight, m.fc2.bias, res2).view(residual.shape)


def _mlp_quick_gelu_gemm(m: MLP, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """On torch's GEMM: QuickGELU as one in-place SiLU, its 1.702 factors inside the GEMMs (BLAS's alpha),
    fc2 accumulating into the residual plus bias."""
    x2, b1 = x.reshape(-1, x.shape[-1]), m.fc1.bias  # [M, D]
    if b1 is None:
        h = torch.mm(x2, m.fc1.weight.t()).mul_(1.702)  # [M, hidden]
    else:
        h = torch.addmm(b1 * 1.702, x2, m.fc1.weight.t(), alpha=1.702)  # [M, hidden] = 1.702 fc1(x)
    F.silu(h, inplace=True)  # 1.702 quick_gelu(fc1(x))
    return gemm_into_residual(h, m.fc2.weight, m.fc2.bias, residual, alpha=1 / 1.702)


def block(blk: Block, x: torch.Tensor, causal: bool = False, packing: Packing | None = None) -> torch.Tensor:
    """``blk(x)``; each branch adds the residual inside its last projection (a + x == x + a exactly)."""
    x = attention(blk.attn, blk.norm1(x), x, causal=causal, packing=packing)
    return mlp(blk.mlp, blk.norm2(x), x)


def stack(t: Transformer, x: torch.Tensor, causal: bool = False, packing: Packing | None = None) -> torch.Tensor:
    """``t(x)``: [B, N, D], or packed rows [T, D] with their ``packing`` (causal stacks only)."""
    for blk in t.blocks:
        x = block(blk, x, causal=causal, packing=packing)
    return x


def stack_first_token(t: Transformer, x: torch.Tensor) -> torch.Tensor:
    """``t(x)[:, 0]``, non-causal, [B, N, D] -> [B, D]: the last block runs its query, projection and MLP
    for position 0 only (no other position's output feeds position 0's)."""
    for blk in t.blocks[:-1]:
        x = block(blk, x)
    last = t.blocks[-1]
    x0 = attention_first_query(last.attn, last.norm1(x), residual=x[:, 0])  # [B, D]
    return mlp(last.mlp, last.norm2(x0), x0)
