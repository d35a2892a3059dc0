"""Contrastive losses for CLIP training: the softmax (InfoNCE) loss and the sigmoid (SigLIP) loss.

Both are pure functions of already-projected features, so they work the same in a single process and
under ``torch.distributed``; the model and the optimizer never need to know which.

Inputs are expected to be **L2-normalized** ``[B, D]`` features (what ``CLIP.forward`` returns). The
losses do not normalize: normalizing twice is harmless but costs a pass, and keeping the functions free of
it lets a caller choose (and lets ``gradcheck`` test the loss itself rather than the norm).

Distributed training
--------------------
With W ranks of local batch B each (N = W*B), every rank computes its **own rows** against **all
columns** of the global similarity matrix ("local loss"), so a rank holds ``[B, N]`` logits rather than
``[N, N]``. The columns come from :func:`gather_features`, an all-gather whose backward carries gradient
back to the rank that owns each feature. The global loss is defined as the **mean of the per-rank
losses**, and with that definition the gradients after DDP's averaging are exactly those of a single
process on the concatenated global batch (the argument is in :class:`_AllGatherWithGrad`).

A plain all-gather (no gradient) in the local-loss form is *wrong*, not approximate: it drops every term
in which this rank's features are the negatives of another rank's rows. ``tests/test_loss.py`` has that
as a negative control.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["clip_loss", "siglip_loss", "gather_features"]


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(world size, rank) in ``group``; (1, 0) when not running distributed.

    A ``group`` is only meaningful once the default process group exists, so passing one without
    ``init_process_group`` is a usage error that ``torch.distributed`` reports itself.
    """
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces (sums) the gradient and keeps this rank's slice.

    Why summing is correct. Let the global loss be L = (1/W) * sum_r L_r, where L_r is rank r's local
    loss. Rank q's features f_q enter *every* L_r (as columns), so dL/df_q = (1/W) * sum_r dL_r/df_q.
    On rank r, autograd produces dL_r/d(gathered) for all N rows; the all-reduce sums those over r, and
    the slice [q*B:(q+1)*B] is sum_r dL_r/df_q = W * dL/df_q. Backpropagating that into rank q's
    parameters and letting DDP average over W ranks gives (1/W) * sum_q W * dL/dtheta|_q = dL/dtheta:
    the exact gradient of the single-process loss on the global batch. Parameters used only after the
    gather (logit_scale, logit_bias) get dL_r/ds on each rank; DDP's mean of those is dL/ds directly.

    A gather *without* gradient keeps only the r = q term, which is why that variant is wrong.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        world, rank = _world(group)
        ctx.group, ctx.rank, ctx.batch = group, rank, x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)  # [W*B, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # all_reduce works in place; the incoming gradient may be a view autograd still owns.
        grad = grad.contiguous().clone()  # [W*B, ...]
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        lo = ctx.rank * ctx.batch
        return grad[lo : lo + ctx.batch], None  # [B, ...]


def _check_equal_shapes(x: torch.Tensor, group: dist.ProcessGroup | None, world: int) -> None:
    """Raise on every rank if local shapes differ.

    The slicing in the backward assumes rank r owns rows [r*B, (r+1)*B) of the gathered tensor, and
    ``all_gather`` itself requires equal shapes (with unequal ones it hangs or corrupts, depending on the
    backend). Every rank sees every shape, so all of them raise together instead of deadlocking.
    """
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)  # [ndim]
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    seen = [tuple(s.tolist()) for s in shapes]
    if any(s != seen[0] for s in seen):
        raise ValueError(
            "all ranks must have the same local batch size and feature width for the distributed loss; "
            f"got per-rank feature shapes {seen}"
        )


def gather_features(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather ``x`` (``[B, ...]`` on each rank) into ``[W*B, ...]``, keeping the autograd graph.

    Rank r's rows come first in rank order, so rank r's own rows are ``[r*B:(r+1)*B]``. The backward sums
    every rank's gradient for a row back to the rank that owns it (see :class:`_AllGatherWithGrad`).
    Without a process group (or with world size 1) this is the identity. All ranks must pass the same
    shape; a mismatch raises ``ValueError`` on every rank.
    """
    world, _ = _world(group)
    if world == 1:
        return x
    _check_equal_shapes(x, group, world)
    return _AllGatherWithGrad.apply(x, group)


@contextlib.contextmanager
def _fp32_region(x: torch.Tensor, upcast: bool) -> Iterator[None]:
    """Disable autocast around the logits when upcasting, so the matmul really runs in fp32."""
    if not upcast:
        yield
        return
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def _promote(x: torch.Tensor, upcast: bool) -> torch.Tensor:
    """fp16/bf16 -> fp32 when upcasting; fp32 and fp64 pass through (gradcheck runs in fp64)."""
    if upcast and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _scalar(v: torch.Tensor | float, like: torch.Tensor, name: str) -> torch.Tensor:
    """A one-element tensor, kept as given so gradients flow into it."""
    if not isinstance(v, torch.Tensor):
        return torch.tensor(float(v), dtype=like.dtype, device=like.device)
    if v.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(v.shape)}")
    return v.reshape(())


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            f"features must be [B, D]; got image {tuple(image_features.shape)}, text {tuple(text_features.shape)}"
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            "image and text features must have the same [B, D] shape (one caption per image); got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )


def _targets(rows: torch.Tensor, columns: torch.Tensor, temperature: float, labels: torch.Tensor) -> torch.Tensor:
    """One-hot ``labels`` for temperature 0, else each row caption's softmax similarity to the column captions.

    The similarity matrix is symmetric, so the same rows serve as targets for images->texts and texts->images.
    """
    if temperature == 0:
        return labels
    with torch.no_grad():
        return torch.softmax(rows.detach() @ columns.detach().T / temperature, dim=-1)  # [rows, columns]


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    group: dist.ProcessGroup | None = None,
    local_loss: bool = True,
    upcast: bool = True,
    soft_targets: float = 0.0,
) -> torch.Tensor:
    """Symmetric cross-entropy of CLIP: (CE(l, y) + CE(lᵀ, y)) / 2 with l = s * I @ Tᵀ and y = arange.

    Args:
        image_features: ``[B, D]`` **L2-normalized** image embeddings (not normalized here).
        text_features: ``[B, D]`` **L2-normalized** text embeddings; row i is image i's caption.
        logit_scale: the **already exponentiated** scale s = exp(model.logit_scale), a scalar tensor
            (gradients flow into it). Clamping belongs to the optimizer step, not here.
        group: process group; default is the global group when ``torch.distributed`` is initialized.
        local_loss: distributed only. ``True``: each rank computes its B rows against all N columns in
            both directions, ``[B, N]`` logits, labels ``rank*B + arange(B)``. ``False``: every rank
            computes the full ``[N, N]`` loss (same value and gradient, W times the work and memory).
        upcast: compute logits and the loss in fp32 (with autocast off) when the features are fp16/bf16;
            a scale of up to 100 on low-precision dot products otherwise loses the softmax's precision.
        soft_targets: ``0`` (default) for CLIP's one-hot targets. ``τ > 0``: row i's target is
            ``softmax(t_i · Tᵀ / τ)``, the captions' own cosine similarity (no gradient), in both directions:
            an image is pushed from a caption close to its own (another dog breed) less than from an
            unrelated one. As τ -> 0 it becomes the one-hot loss.

    Returns:
        A scalar. Single process: the loss on the batch. Distributed: this rank's loss; the global loss
        is the mean over ranks, which equals the single-process loss on the concatenated global batch, and
        after DDP gradient averaging the gradients match it exactly. All ranks need the same B.
    """
    _check_pair(image_features, text_features)
    if not (math.isfinite(soft_targets) and soft_targets >= 0):
        raise ValueError(f"soft_targets must be a temperature >= 0 (0: one-hot targets); got {soft_targets}")
    world, rank = _world(group)
    with _fp32_region(image_features, upcast):
        scale = _promote(_scalar(logit_scale, image_features, "logit_scale"), upcast)
        img = _promote(image_features, upcast)  # [B, D]
        txt = _promote(text_features, upcast)  # [B, D]
        b = img.shape[0]
        if world == 1:
            logits = scale * (img @ txt.T)  # [B, B], rows: images, columns: texts
            labels = _targets(txt, txt, soft_targets, torch.arange(b, device=img.device))  # [B] or [B, B]
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        # Gather in the features' own dtype (half the traffic under AMP), upcast afterwards.
        all_img = _promote(gather_features(image_features, group), upcast)  # [N, D]
        all_txt = _promote(gather_features(text_features, group), upcast)  # [N, D]
        if local_loss:
            logits_per_image = scale * (img @ all_txt.T)  # [B, N]: my images vs every text
            logits_per_text = scale * (txt @ all_img.T)  # [B, N]: my texts vs every image
            labels = rank * b + torch.arange(b, device=img.device)  # [B]: my diagonal block
            labels = _targets(txt, all_txt, soft_targets, labels)  # [B] or [B, N]
        else:
            logits_per_image = scale * (all_img @ all_txt.T)  # [N, N]
            logits_per_text = logits_per_image.T  # [N, N]
            labels = _targets(all_txt, all_txt, soft_targets, torch.arange(world * b, device=img.device))
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    group: dist.ProcessGroup | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Sigmoid loss (SigLIP): -(1/B) * sum_ij log sigmoid(z_ij * (s * x_i·y_j + b)), z = +1 on the diagonal.

    Each image-text pair is an independent binary decision, so no row-wise softmax couples the batch:
    only the texts need to be gathered, and a rank's loss is its B images against all N texts.

    Args:
        image_features, text_features: ``[B, D]`` **L2-normalized** features (not normalized here).
        logit_scale: the **already exponentiated** scale s (a scalar tensor; SigLIP starts at 10).
        logit_bias: the bias b (a scalar tensor; SigLIP starts at -10).
        group: process group; default is the global group when ``torch.distributed`` is initialized.
        upcast: as in :func:`clip_loss`.

    Normalization: the sum over this rank's ``[B, N]`` block is divided by the *local* B. The global loss
    is the mean over ranks, which is (1/N) * the sum over the full ``[N, N]`` matrix, i.e. exactly this
    function run in one process on the global batch. With texts gathered by :func:`gather_features`, DDP's
    gradient averaging then reproduces that single-process gradient exactly (same argument as for
    :func:`clip_loss`: image features are used only on their own rank, text features on every rank and
    summed back by the gather's backward). The all-gather is used instead of OpenCLIP's neighbour exchange:
    the value and gradient are identical, and memory is the same ``[B, N]`` logits plus ``[N, D]`` texts.
    """
    _check_pair(image_features, text_features)
    world, rank = _world(group)
    with _fp32_region(image_features, upcast):
        scale = _promote(_scalar(logit_scale, image_features, "logit_scale"), upcast)
        bias = _promote(_scalar(logit_bias, image_features, "logit_bias"), upcast)
        img = _promote(image_features, upcast)  # [B, D]
        b = img.shape[0]
        all_txt = _promote(gather_features(text_features, group), upcast)  # [N, D]; [B, D] if W == 1
        logits = scale * (img @ all_txt.T) + bias  # [B, N]
        signs = torch.full_like(logits, -1.0)  # [B, N]: every pair is a negative ...
        rows = torch.arange(b, device=img.device)
        signs[rows, rank * b + rows] = 1.0  # ... except my images with my own captions
        return -F.logsigmoid(signs * logits).sum() / b
