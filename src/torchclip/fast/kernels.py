"""Inference products: oneDNN's fp32 kernels, torch's GEMM accumulating into the residual, and attention
for a single query without projecting keys or values.

On x86 builds with MKL-DNN, fp32 CPU projections go through ``mkldnn::_linear_pointwise``. Elsewhere
(other dtypes, devices, autocast) they go through torch's GEMM. Same maths, another summation order:
results move by float rounding. Everything here is inference only (no autograd formulas).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["ONEDNN", "ONEDNN_AVAILABLE", "ONEDNN_MAX_ROWS", "onednn_enabled", "onednn_eligible", "uses_onednn",
           "inference_linear", "gemm_into_residual", "same_dtype_no_autocast", "attend_one_query"]

# TORCHCLIP_ONEDNN=0, or this attribute set to False, keeps torch's default kernels everywhere.
ONEDNN_AVAILABLE: bool = (platform.machine().lower() in ("x86_64", "amd64")
                          and torch.backends.mkldnn.is_available()
                          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
ONEDNN: bool = ONEDNN_AVAILABLE and os.environ.get("TORCHCLIP_ONEDNN", "1") != "0"
# Products with more rows than this run on torch's GEMM, which is the faster of the two on plain (unpacked)
# weights there; None: no limit.
ONEDNN_MAX_ROWS: int | None = 512


@contextlib.contextmanager
def onednn_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, set ``ONEDNN`` (``True`` only where the kernels exist)."""
    global ONEDNN
    saved, ONEDNN = ONEDNN, enabled and ONEDNN_AVAILABLE
    try:
        yield
    finally:
        ONEDNN = saved


def _dispatch_mode_active() -> bool:
    """A ``TorchDispatchMode`` (``FlopCounterMode``, fake tensors) sees the standard ops only."""
    length = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(length and length())


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether an op on ``x`` with ``weight`` may take oneDNN's fp32 kernels (not under CPU autocast,
    which asks for lower-precision products)."""
    return (ONEDNN and torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not _dispatch_mode_active())


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``inference_linear(x, weight, ...)`` takes oneDNN's kernel rather than torch's GEMM."""
    return onednn_eligible(x, weight) and (ONEDNN_MAX_ROWS is None or x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1])


def same_dtype_no_autocast(*tensors: torch.Tensor) -> bool:
    """GEMMs with ``out=`` are safe: one dtype throughout and no autocast (which skips ``out=`` variants)."""
    t = tensors[0]
    return all(u.dtype == t.dtype for u in tensors) and not torch.is_autocast_enabled(t.device.type)


def gemm_into_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       residual: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * x @ weight.T + bias + residual`` on torch's GEMM, accumulating into (residual + bias).

    One memory pass fewer than adding the residual after the product; ``addmm(out=)`` because FLOP
    counters know it (not ``addmm_``).
    """
    n = weight.shape[0]
    out = torch.empty(residual.numel() // n, n, dtype=residual.dtype, device=residual.device)  # [M, N]
    if bias is None:
        out.copy_(residual.reshape(-1, n))
    else:
        torch.add(residual.reshape(-1, n), bias, out=out)
    return torch.addmm(out, x.reshape(-1, x.shape[-1]), weight.t(), alpha=alpha, out=out).view(residual.shape)


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + residual`` (``residual`` optional, shaped like the output).

    oneDNN adds the residual in place into its fresh output; torch's GEMM accumulates into it.
    """
    if not uses_onednn(x, weight):
        operands = (x, weight) + (() if bias is None else (bias,))
        if residual is not None and same_dtype_no_autocast(*operands, residual):
            return gemm_into_residual(x, weight, bias, residual)
        y = F.linear(x, weight, bias)
        return y if residual is None else y.add_(residual)
    lead, n = x.shape[:-1], weight.shape[0]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [M, K]
    y = torch.ops.mkldnn._linear_pointwise(x2, weight.contiguous(), bias, "none", [], "")  # [M, N]
    if residual is not None:  # (x W^T + b) + residual, in that order
        y.add_(residual.reshape(-1, n))
    return y.view(*lead, n)  # [..., N]


def attend_one_query(q: torch.Tensor, x: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                     b_v: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Multi-head attention of one query per row over the tokens ``x``, without projecting them.

    ``q``: [B, D], already projected; ``x``: [B, N, C]; ``w_k``, ``w_v``: [D, C]; returns [B, D], the heads'
    outputs side by side (before the output projection), as ``softmax(q_h k_h^T / sqrt(Dh)) v_h`` with
    ``k = x w_k^T + b_k`` and ``v = x w_v^T + b_v`` would give them.

    With one query the projections move to the other side of each product:
    ``q_h . (W_k,h x_t + b_k,h) = (W_k,h^T q_h) . x_t + q_h . b_k,h``, whose last term is the same for every
    token and cancels in the softmax (``b_k`` is not needed); and since the weights sum to one,
    ``sum_t a_t (W_v,h x_t + b_v,h) = W_v,h (sum_t a_t x_t) + b_v,h``. That is O(H (Dh + N) C) work per row
    instead of the O(N D C) of projecting every token.
    """
    b, n, c = x.shape  # [B, N, C]
    d = q.shape[-1]
    dh = d // heads
    qh = (q * dh**-0.5).view(b, heads, dh).transpose(0, 1)  # [H, B, Dh]
    qk = torch.bmm(qh, w_k.view(heads, dh, c))  # [H, B, C]: W_k,h^T q_h per head
    scores = torch.bmm(qk.transpose(0, 1), x.transpose(1, 2))  # [B, H, N]
    attn = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)  # [B, H, N], fp32 for half inputs too
    xbar = torch.bmm(attn, x)  # [B, H, C]: the attention-weighted mean token per head
    y = torch.bmm(xbar.transpose(0, 1), w_v.view(heads, dh, c).transpose(1, 2))  # [H, B, Dh]
    y = y.transpose(0, 1).reshape(b, d)  # [B, D]
    return y if b_v is None else y.add_(b_v)
