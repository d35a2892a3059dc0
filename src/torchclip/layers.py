"""Building blocks shared by both towers: fp32 LayerNorm, QuickGELU, attention and the pre-LN block.

Attention goes through ``F.scaled_dot_product_attention`` with one fused ``qkv`` projection (a single
matmul instead of three), which is what makes small batches fast on a CPU. Parameter names here are the
public layout of torchclip checkpoints; foreign layouts are mapped onto them in ``formats.py``.

Inference (no autograd recording) takes a few shortcuts that compute the same numbers with fewer memory
passes: residual adds and the QuickGELU product write into tensors the block has just created, and on
torch's GEMM path the large ones come from ``memory.empty`` (huge pages: fewer page faults in a fresh
process). Causal stacks also accept *packed* rows (``Packing``): the tokens of rows of different lengths
back to back, so every projection and MLP runs on real tokens only, and only attention sees a padded
layout.

On x86 CPUs, fp32 inference projections go through oneDNN (``inference_linear``) instead of MKL's GEMM, on
copies of their weights pre-packed in oneDNN's blocked layout and cached on their modules
(``packed_weight``, ``PACK_MAX_ROWS``). Residual adds and the MLP's activation run in place on the
products rather than as oneDNN's fused post-ops, which were slower on this AVX2 machine; QuickGELU is one
in-place SiLU with its 1.702 factors folded into fc1's and fc2's packed weights. On the 2-core benchmark
machine, session 8's no-post-op, packed-everywhere path alone made ViT-B/32 forwards 1.13x faster at
batch 64 and 1.03-1.06x at batch 1-8 (benchmarks/results_encode.md, sessions 3, 7 and 8). Same maths, a
different summation order: features move by float rounding. ``ONEDNN_MAX_ROWS`` can send larger products
back to MKL. A non-causal stack's last block can also run for position 0 only
(``Transformer.forward_first_token``): the ViT uses only its class token.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import memory

__all__ = ["LayerNorm", "QuickGELU", "Attention", "MLP", "Block", "Transformer", "Packing", "make_activation",
           "fast_inference", "plain_ops", "observed", "hooks_see_plain_ops", "inference_linear", "attend_one_query", "ONEDNN", "ONEDNN_MAX_ROWS", "PACK_MAX_ROWS", "onednn_enabled",
           "packed_weight", "DerivedCache", "derived_cache", "tensor_key"]

# Route fp32 CPU inference projections (and the ResNet's BN-folded convs, with pre-packed weights) through
# oneDNN's kernels, x86 builds with MKL-DNN only. Set TORCHCLIP_ONEDNN=0, or this attribute to False, for
# torch's default kernels everywhere.
ONEDNN_AVAILABLE: bool = (platform.machine().lower() in ("x86_64", "amd64")
                          and torch.backends.mkldnn.is_available()
                          and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
ONEDNN: bool = ONEDNN_AVAILABLE and os.environ.get("TORCHCLIP_ONEDNN", "1") != "0"
# Projections with more rows than this run on torch's GEMM (MKL) instead; None: no limit. Until session 7
# this was 256: then whole ViT-B/32 forwards, paired, ran 0.88x on oneDNN at 600 and 1,600 rows. Measured
# again in session 7 on the same VM, with the activation fused into fc1: oneDNN everywhere ran 1.15x at
# batch 8 and 1.09-1.13x at batch 32 in one process, and 1.10x / 1.05x raw (1.19x / 1.12x drift-normalized)
# at batch 8 / 64 in fresh processes (benchmarks/results_encode.md, session 7).
ONEDNN_MAX_ROWS: int | None = None


_PLAIN: contextvars.ContextVar[bool] = contextvars.ContextVar("torchclip_plain_ops", default=False)


def fast_inference() -> bool:
    """True when nothing records autograd history, traces or compiles: in-place and cached shortcuts are safe.

    Tracing (ONNX export) and compilation see the plain ops, so an exported graph never bakes in a batch
    split or a cached tensor. Inside ``plain_ops()`` it is False too.
    """
    if _PLAIN.get() or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not torch.compiler.is_compiling()


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Within the block, inference runs the plain module calls (``fast_inference()`` is False)."""
    token = _PLAIN.set(True)
    try:
        yield
    finally:
        _PLAIN.reset(token)


@contextlib.contextmanager
def hooks_see_plain_ops(tower: nn.Module, exempt: tuple[nn.Module, ...] = ()) -> Iterator[None]:
    """Run a tower's inference under ``plain_ops()`` when a hook outside ``exempt`` watches one of its modules.

    The shortcuts would skip that module's call and the hook would never fire (``observed``); global hooks
    do not count.
    """
    if fast_inference() and observed(tower, exempt, global_hooks=False):
        with plain_ops():
            yield
    else:
        yield


def observed(module: nn.Module, exempt: tuple[nn.Module, ...] = (), global_hooks: bool = True) -> bool:
    """Whether a forward (pre-)hook on ``module`` or a submodule outside ``exempt`` (or, with
    ``global_hooks``, a global one) could fire.

    The inference shortcuts call projections, convs and the ViT's last block as functions, not modules, so
    hooks on them would silently never fire; a tower that finds one runs under ``plain_ops()`` instead, where
    every hook sees what it sees with grad on. ``exempt`` lists modules the shortcuts still call as modules.
    Towers pass ``global_hooks=False``: global hooks belong to tools that follow whatever modules run
    (``FlopCounterMode``'s module tracker), which must measure the shortcuts, not switch them off.
    """
    from torch.nn.modules import module as mod

    if global_hooks and (mod._global_forward_hooks or mod._global_forward_pre_hooks):
        return True
    skip = {id(m) for m in exempt}
    stack = [module]  # a plain walk: 3x faster than module.modules() (64 against 196 us for a ViT-B tower)
    while stack:
        m = stack.pop()
        if (m._forward_hooks or m._forward_pre_hooks) and id(m) not in skip:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


@contextlib.contextmanager
def onednn_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, set ``ONEDNN`` (``False``: torch's default kernels, to time or compare them).

    ``True`` turns the kernels on only where they exist (``ONEDNN_AVAILABLE``), even if the environment
    switched them off.
    """
    global ONEDNN
    saved, ONEDNN = ONEDNN, enabled and ONEDNN_AVAILABLE
    try:
        yield
    finally:
        ONEDNN = saved


def _dispatch_mode_active() -> bool:
    """A ``TorchDispatchMode`` (``FlopCounterMode``, fake tensors, ...) sees the standard ops only."""
    length = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(length and length())


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether an inference op on ``x`` with ``weight`` may take oneDNN's fused fp32 kernels.

    Not under CPU autocast, which asks for lower-precision products than these fp32 kernels compute.
    """
    return (ONEDNN and torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and not _dispatch_mode_active())


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``inference_linear(x, weight, ...)`` takes oneDNN's kernel rather than torch's GEMM."""
    return onednn_eligible(x, weight) and (ONEDNN_MAX_ROWS is None or x.numel() <= ONEDNN_MAX_ROWS * x.shape[-1])


def _same_dtype_no_autocast(*tensors: torch.Tensor) -> bool:
    """GEMMs with ``out=`` are safe: one dtype throughout and no autocast (which skips ``out=`` variants)."""
    t = tensors[0]
    return all(u.dtype == t.dtype for u in tensors) and not torch.is_autocast_enabled(t.device.type)


def _gemm_into_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        residual: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * x @ weight.T + bias + residual`` on torch's GEMM, accumulating into (residual + bias).

    One memory pass fewer than adding the residual after the product. ``addmm(out=)`` rather than
    ``addmm_``, which FLOP counters do not know.
    """
    n = weight.shape[0]
    out = memory.empty(residual.numel() // n, n, like=residual)  # [M, N]
    if bias is None:
        out.copy_(residual.reshape(-1, n))
    else:
        torch.add(residual.reshape(-1, n), bias, out=out)
    return torch.addmm(out, x.reshape(-1, x.shape[-1]), weight.t(), alpha=alpha, out=out).view(residual.shape)


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * x @ weight.T + bias``: ``F.linear``'s own torch GEMM (``addmm``/``mm``), into a ``memory.empty``
    buffer. ``alpha`` (BLAS's, free) needs a bias."""
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    out = memory.empty(x2.shape[0], weight.shape[0], like=x2)  # [M, N]
    if bias is None:
        torch.mm(x2, weight.t(), out=out)
    else:
        torch.addmm(bias, x2, weight.t(), alpha=alpha, out=out)
    return out.view(*x.shape[:-1], weight.shape[0])


# Products of 2 rows or more (up to this many; None: no limit) run on a copy of the weight pre-packed in
# oneDNN's blocked layout, cached on the module that owns it, instead of oneDNN reordering the plain weight
# on every call. Packed over plain: the 48 ViT-B/32 projections ran 1.18x at 13 rows, 1.09x at 50,
# 1.04-1.06x at 100-400 (0.93x at one row, hence the lower bound); fc1 alone at 1,600 rows 1.05x
# (benchmarks/results_encode.md, sessions 7 and 8). It also carries the QuickGELU factors for free
# (``MLP._onednn``). The price is a second copy of the transformer weights in memory once the model has
# run (ViT-B/32, one image and one caption: resident memory 851 -> 1,396 MB); 0 never packs.
PACK_MAX_ROWS: int | None = None


class DerivedCache:
    """A module's derived inference tensors: never state, dropped by copies and pickling.

    (oneDNN's packed tensors cannot be deep-copied or pickled, and a copy would have to be rebuilt anyway.)
    """

    __slots__ = ("entry",)

    def __init__(self) -> None:
        # (key, tensors), replaced as one object: a concurrent caller (``torchclip serve`` answers requests
        # on threads) never pairs a new key with the old tensors.
        self.entry: tuple[tuple | None, tuple] = (None, ())

    def __deepcopy__(self, memo: dict) -> DerivedCache:
        return DerivedCache()

    def __reduce__(self) -> tuple:
        return (DerivedCache, ())


def derived_cache(module: nn.Module, slot: str) -> DerivedCache:
    """The ``DerivedCache`` named ``slot`` on ``module`` (a plain attribute: not state, not a buffer)."""
    cache = module.__dict__.get(slot)
    if cache is None:
        cache = module.__dict__[slot] = DerivedCache()
    return cache


def tensor_key(t: torch.Tensor) -> tuple | None:
    """What identifies ``t``'s current values for a cache of tensors derived from it, or None if nothing can.

    Address, version counter (bumped by every in-place change: an optimizer step, ``load_state_dict``),
    shape, strides, dtype and device. Inference tensors (a model built under ``torch.inference_mode()``)
    count no versions, so nothing derived from them may be cached.
    """
    if t.is_inference():
        return None
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


def packed_weight(owner: nn.Module, weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor | None:
    """``scale * weight`` (fp32, [N, K], owned by ``owner``) in oneDNN's blocked layout for
    ``_linear_pointwise``, cached; None if it cannot be cached (an inference tensor).

    Keyed by ``tensor_key`` and ``scale``; the entry holds the weight itself, so its memory cannot be
    reused by another tensor while cached, and ``.to()`` or a replaced parameter rebuilds it. Views (a
    reshaped conv weight) key the same way. ``scale`` folds a constant factor into the packed copy for
    free (the MLP's QuickGELU factors).
    """
    key = tensor_key(weight)
    if key is None:
        return None
    key = (key, scale)
    cache = derived_cache(owner, "_packed_linear")
    cached_key, cached = cache.entry
    if cached_key != key:
        with torch.no_grad():
            plain = weight.contiguous() if scale == 1.0 else weight * scale
            cached = (torch.ops.mkldnn._reorder_linear_weight(plain), weight)
        cache.entry = (key, cached)
    return cached[0]


def _packs(x2: torch.Tensor, owner: nn.Module | None) -> bool:
    """Whether a product over the rows of ``x2`` ([M, K]) uses a weight pre-packed on ``owner``."""
    return owner is not None and 2 <= x2.shape[0] and (PACK_MAX_ROWS is None or x2.shape[0] <= PACK_MAX_ROWS)


def _onednn_weight(x2: torch.Tensor, weight: torch.Tensor, owner: nn.Module | None) -> torch.Tensor:
    """The weight to hand oneDNN for the rows of ``x2`` ([M, K]): pre-packed where ``_packs`` says so."""
    packed = packed_weight(owner, weight) if _packs(x2, owner) else None
    return weight.contiguous() if packed is None else packed


def inference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, owner: nn.Module | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + residual`` (``residual`` optional, shaped like the output).

    Inference only (call it under ``fast_inference()``): the oneDNN op has no autograd formula, and the
    fallback adds the residual in place into the fresh output. ``owner``, the module that holds ``weight``
    (one weight per owner), lets oneDNN reuse a pre-packed copy cached on it (``packed_weight``).
    """
    if not uses_onednn(x, weight):
        operands = (x, weight) + (() if bias is None else (bias,))
        if residual is not None and _same_dtype_no_autocast(*operands, residual):
            return _gemm_into_residual(x, weight, bias, residual)
        if residual is None and x.device.type == "cpu" and _same_dtype_no_autocast(*operands):
            return _gemm(x, weight, bias)
        y = F.linear(x, weight, bias)
        return y if residual is None else y.add_(residual)
    lead, n = x.shape[:-1], weight.shape[0]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [M, K]
    w = _onednn_weight(x2, weight, owner)  # [N, K]
    y = torch.ops.mkldnn._linear_pointwise(x2, w, bias, "none", [], "")  # [M, N]
    if residual is not None:  # (x W^T + b) + residual, in that order
        y.add_(residual.reshape(-1, n))
    return y.view(*lead, n)  # [..., N]


def attend_one_query(q: torch.Tensor, x: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                     b_v: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Multi-head attention of one query per row over the tokens ``x``, without projecting them.

    ``q``: [B, D], already projected; ``x``: [B, N, C]; ``w_k``, ``w_v``: [D, C]; returns [B, D], the
    heads' outputs side by side (before the output projection), as ``softmax(q_h k_h^T / sqrt(Dh)) v_h``
    with ``k = x w_k^T + b_k`` and ``v = x w_v^T + b_v`` would give them.

    With a single query the projections can move to the other side of each product:
    ``q_h . (W_k,h x_t + b_k,h) = (W_k,h^T q_h) . x_t + q_h . b_k,h``, where the last term is the same for
    every token and cancels in the softmax, so ``b_k`` is not needed; and since the weights sum to one,
    ``sum_t a_t (W_v,h x_t + b_v,h) = W_v,h (sum_t a_t x_t) + b_v,h``. That is O(H (Dh + N) C) work per row
    instead of the O(N D C) of projecting every token: 28x less for RN50's attention pool (7% of the whole
    ResNet's FLOPs), 25x less for a ViT's class-token-only last block. Same maths, another association
    order: results move by float rounding.
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

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Packing | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [B, N, D], or packed [T, D] rows described by ``packing`` (causal only).

        ``residual`` (inference only, shaped like ``x``) is added to the output inside the projection.
        """
        fast = residual is not None
        qkv = inference_linear(x, self.qkv.weight, self.qkv.bias, owner=self.qkv) if fast else self.qkv(x)
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
        y = y.reshape(b, n, d) if packing is None else y.reshape(b * n, d).index_select(0, packing.scatter)
        if not fast:
            return self.proj(y)
        return inference_linear(y, self.proj.weight, self.proj.bias, residual, owner=self.proj)  # like x

    def first_query(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Inference, non-causal: the output at position 0 only, plus ``residual`` ([B, D]): [B, D].

        The query, the attention row and the output projection are computed for position 0 alone, and
        the keys and values are never projected (``attend_one_query``). No other position's output feeds
        position 0's, so this is the full block's position-0 output (up to float rounding: the products
        are associated differently).
        """
        d = x.shape[-1]  # x: [B, N, D]
        w, bias = self.qkv.weight, self.qkv.bias
        q = inference_linear(x[:, 0], w[:d], None if bias is None else bias[:d])  # [B, D]
        y = attend_one_query(q, x, w[d:2 * d], w[2 * d:], None if bias is None else bias[2 * d:], self.heads)
        return inference_linear(y, self.proj.weight, self.proj.bias, residual, owner=self.proj)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (inference only, shaped like ``x``) is added to the output inside ``fc2``."""
        if residual is None:
            return self.fc2(self.act(self.fc1(x)))
        if uses_onednn(x, self.fc1.weight):
            return self._onednn(x, residual)
        if isinstance(self.act, QuickGELU) and _same_dtype_no_autocast(x, self.fc1.weight, residual):
            return self._quick_gelu_gemm(x, residual)
        h = self.act(inference_linear(x, self.fc1.weight, self.fc1.bias, owner=self.fc1))  # [..., hidden]
        return inference_linear(h, self.fc2.weight, self.fc2.bias, residual, owner=self.fc2)

    def _onednn(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Inference on oneDNN: fc1, the activation in place on its output, fc2 adding the residual.

        oneDNN's fused activations (its eltwise post-ops) cost more than they save on AVX2: fc1 at 1,600 x
        768 -> 3,072 on its packed weight took 1.24x the bare product's time with ``swish`` fused and 1.43x
        with ``gelu``, against 1.04x with a separate in-place ``silu_`` (benchmarks/results_encode.md,
        session 8). QuickGELU runs as one
        in-place SiLU: ``silu(1.702 h) = 1.702 quick_gelu(h)``, so with packed weights fc1's copy is
        scaled by 1.702 and fc2's by 1/1.702 (free); without them the input side is scaled and one more
        pass divides.
        """
        x2, b1 = x.reshape(-1, x.shape[-1]).contiguous(), self.fc1.bias  # [M, D]
        res2 = residual.reshape(-1, residual.shape[-1])  # [M, D]
        pointwise = torch.ops.mkldnn._linear_pointwise
        if isinstance(self.act, QuickGELU):
            w1 = packed_weight(self.fc1, self.fc1.weight, 1.702) if _packs(x2, self.fc1) else None
            w2 = packed_weight(self.fc2, self.fc2.weight, 1 / 1.702) if w1 is not None else None
            b1s = None if b1 is None else b1 * 1.702
            if w1 is not None and w2 is not None:
                h = F.silu(pointwise(x2, w1, b1s, "none", [], ""), inplace=True)  # [M, hidden] 1.702 qgelu
                return pointwise(h, w2, self.fc2.bias, "none", [], "").add_(res2).view(residual.shape)
            h = F.silu(pointwise(x2 * 1.702, self.fc1.weight.contiguous(), b1s, "none", [], ""), inplace=True)
            h.mul_(1 / 1.702)  # quick_gelu(fc1(x)), [M, hidden]
        else:
            h = pointwise(x2, _onednn_weight(x2, self.fc1.weight, self.fc1), b1, "none", [], "")  # [M, hidden]
            if isinstance(self.act, nn.GELU):
                torch.ops.aten.gelu_(h, approximate=self.act.approximate)
            else:
                h = self.act(h)
        return inference_linear(h, self.fc2.weight, self.fc2.bias, res2, owner=self.fc2).view(residual.shape)

    def _quick_gelu_gemm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Inference on torch's GEMM: QuickGELU as one in-place SiLU, its 1.702 factors inside the GEMMs.

        ``silu(1.702 h) = 1.702 h sigmoid(1.702 h) = 1.702 quick_gelu(h)``: fc1's GEMM scales its product by
        1.702 (BLAS's alpha, free), the SiLU runs in place, and fc2's GEMM scales by 1/1.702 while it adds
        into the residual plus bias. That replaces QuickGELU's three passes and temporary with one pass, and
        the residual add with a GEMM accumulating into it (as ``inference_linear`` does).
        """
        x2, b1 = x.reshape(-1, x.shape[-1]), self.fc1.bias  # [M, D]
        if b1 is None:
            h = torch.mm(x2, self.fc1.weight.t()).mul_(1.702)  # [M, hidden]
        else:
            h = _gemm(x2, self.fc1.weight, b1 * 1.702, alpha=1.702)  # [M, hidden] = 1.702 fc1(x)
        F.silu(h, inplace=True)  # 1.702 quick_gelu(fc1(x))
        return _gemm_into_residual(h, self.fc2.weight, self.fc2.bias, residual, alpha=1 / 1.702)


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
        # The residual is added inside each branch's last projection (a + x == x + a exactly).
        x = self.attn(self.norm1(x), causal=causal, packing=packing, residual=x)
        return self.mlp(self.norm2(x), residual=x)


    def first_token(self, x: torch.Tensor) -> torch.Tensor:
        """Inference, non-causal: this block's output at position 0 only, [B, N, D] -> [B, D]."""
        x0 = self.attn.first_query(self.norm1(x), residual=x[:, 0])  # [B, D]
        return self.mlp(self.norm2(x0), residual=x0)


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

    def forward_first_token(self, x: torch.Tensor) -> torch.Tensor:
        """Inference, non-causal: the stack's output at position 0 only, [B, N, D] -> [B, D].

        The last block runs its query, projection and MLP for that one position: about 1/12 fewer FLOPs
        for a 12-layer ViT, with the same result as ``forward(x)[:, 0]`` up to float rounding.
        """
        for block in self.blocks[:-1]:
            x = block(x)
        return self.blocks[-1].first_token(x)
