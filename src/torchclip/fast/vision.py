"""The reference image towers for CPU inference.

ViT: patch embedding as one matmul over unfolded patches, the last block for the class token only.
ResNet: channels-last layout, each eval-mode BatchNorm folded into the conv before it (cached, rebuilt
whenever a weight or running statistic changes), on x86 the folded weights pre-packed for oneDNN per
input shape with ReLU and residual adds fused, each block writing into its shortcut; the attention pool
projects one query instead of every token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..reference.vision import Bottleneck, ModifiedResNet, VisionTransformer, check_pixels
from .kernels import attend_one_query, inference_linear, onednn_eligible
from .transformer import stack_first_token

__all__ = ["encode_vit", "encode_resnet", "PACK_CONVS"]

# False: oneDNN's convs take the folded weight as it is (reordered on every call), nothing packed is kept.
PACK_CONVS: bool = True


def embed_patches(v: VisionTransformer, pixels: torch.Tensor) -> torch.Tensor:
    """``v.patch_embed`` as a matmul over unfolded patches (faster on CPU than a 3-channel conv):
    [B, 3, R, R] -> [B, g*g, W], row-major grid."""
    w = v.patch_embed.weight  # [W, 3, P, P]
    pixels = pixels.to(w.dtype)
    b, c, h, wd = pixels.shape
    p = v.patch_size
    gh, gw = h // p, wd // p
    patches = pixels.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
    return inference_linear(patches, w.reshape(w.shape[0], -1))  # [B, g*g, W]


def encode_vit(v: VisionTransformer, pixels: torch.Tensor, projected: bool = True) -> torch.Tensor:
    """``v(pixels, projected)`` in eval mode without autograd."""
    check_pixels(pixels, v.image_size)
    x = embed_patches(v, pixels)  # [B, g*g, W]
    cls = v.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, W]
    x = v.norm_pre(torch.cat([cls, x], dim=1) + v.pos_embed.to(x.dtype))  # [B, 1+g*g, W]
    x = v.norm_post(stack_first_token(v.transformer, x))  # [B, W]
    return x @ v.proj.to(x.dtype) if projected else x


class DerivedCache:
    """A module's derived inference tensors: never state, dropped by copies and pickling (oneDNN's
    packed tensors can be neither deep-copied nor pickled, and a copy would rebuild them anyway)."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        # (key, tensors), replaced as one object: a concurrent caller (the web app answers requests on
        # threads) never pairs a new key with the old tensors.
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
    """What identifies ``t``'s current values for a cache derived from it, or None if nothing can.

    Address, version counter (bumped by every in-place change: an optimizer step, ``load_state_dict``),
    shape, strides, dtype and device. Inference tensors count no versions, so nothing may be derived
    from them.
    """
    if t.is_inference():
        return None
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)


def _foldable(bn: nn.BatchNorm2d) -> bool:
    return not bn.training and bn.affine and bn.track_running_stats


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` followed by eval-mode ``bn`` as one conv, cached on ``bn`` and keyed by
    each source tensor's identity and version (a loaded state dict, an optimizer step or ``.to()``
    rebuilds it)."""
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
    """The folded ``weight`` pre-packed for oneDNN for inputs shaped exactly like ``x``.

    A pack for one shape runs other shapes slower than the plain layout, so packs are per input shape,
    batch included; the two most recent shapes are kept. Without ``PACK_CONVS``: ``weight`` itself.
    """
    if not PACK_CONVS:
        return weight
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


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``bn(conv(x))``, then ReLU if asked, as one conv with the BN folded in."""
    if not _foldable(bn):
        y = bn(conv(x))
        return F.relu(y) if relu else y
    weight, bias = _folded(conv, bn)
    if onednn_eligible(x, weight):  # ReLU fused into the conv
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), _packed(conv, bn, weight, x), bias,
            list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "relu" if relu else "none",
            [], "")
    y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.relu_() if relu else y


def conv_bn_add_relu_(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual = relu(bn(conv(x)) + residual)``, in place (fused where oneDNN can)."""
    if (_foldable(bn) and onednn_eligible(x, conv.weight) and residual.dtype == conv.weight.dtype
            and residual.is_contiguous(memory_format=torch.channels_last)):
        weight, bias = _folded(conv, bn)
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x.contiguous(memory_format=torch.channels_last), _packed(conv, bn, weight, x), bias,
            list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "add", 1.0, "relu", [], "")
    return residual.add_(conv_bn(conv, bn, x)).relu_()


def bottleneck_(blk: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """``blk(x)``, written into ``x`` (or into the fresh downsampled shortcut): ``x`` must be ours to
    overwrite, so no new block of the output's size is allocated and page-faulted."""
    y = conv_bn(blk.conv1, blk.bn1, x, relu=True)
    y = blk.pool(conv_bn(blk.conv2, blk.bn2, y, relu=True))
    ds = blk.downsample
    shortcut = x if ds is None else conv_bn(ds.conv, ds.bn, ds.pool(x))
    return conv_bn_add_relu_(blk.conv3, blk.bn3, y, shortcut)


def encode_resnet(r: ModifiedResNet, pixels: torch.Tensor, projected: bool = True) -> torch.Tensor:
    """``r(pixels, projected)`` in eval mode without autograd."""
    check_pixels(pixels, r.image_size)
    stem, pool = r.stem, r.attn_pool
    # oneDNN's convs are fastest on NHWC; every op below keeps the layout, the values are the same.
    x = pixels.to(stem.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
    x = conv_bn(stem.conv1, stem.bn1, x, relu=True)
    x = conv_bn(stem.conv2, stem.bn2, x, relu=True)
    x = stem.pool(conv_bn(stem.conv3, stem.bn3, x, relu=True))
    for stage in r.stages:
        for blk in stage:
            x = bottleneck_(blk, x)  # x is the previous block's output, read by nobody else
    x = pool.tokens(x)  # [B, 1+h*w, C]
    q = F.linear(x[:, 0], pool.q_proj.weight, pool.q_proj.bias)  # [B, C]
    y = attend_one_query(q, x, pool.k_proj.weight, pool.v_proj.weight, pool.v_proj.bias, pool.heads)
    return F.linear(y, pool.out_proj.weight, pool.out_proj.bias) if projected else y  # [B, E]
