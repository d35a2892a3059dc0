"""Process-group setup and model wrapping for ``torchrun``: DDP by default, FSDP2 when asked.

Nothing here runs unless ``WORLD_SIZE > 1`` (torchrun sets it); a plain ``python -m torchclip.train`` is a
single process and every helper degrades to the identity. The backend follows the device (NCCL on GPUs,
gloo on CPU) unless the config names one.

Multi-node: run the same command on every node with ``torchrun --nnodes=N --nproc-per-node=G
--node-rank=<i> --rdzv-backend=c10d --rdzv-endpoint=<host of node 0>:29500 --rdzv-id=<job id>``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..model import CLIP

__all__ = ["DistInfo", "init_distributed", "TwoTower", "wrap_model", "all_reduce_mean", "barrier",
           "model_state_dict", "optimizer_state_dict", "load_model_state", "load_optimizer_state", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Read torchrun's environment, pick the device and start the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        name = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class TwoTower(nn.Module):
    """The training forward: normalized image/text embeddings and exp(logit_scale) (and the logit bias of a
    sigmoid-loss model), as a tuple.

    DDP and FSDP hook a module's ``forward``; this wrapper gives them one that returns only what the loss
    needs (no [B, B] logits) in a plain tuple they can traverse. A locked tower runs under ``no_grad``.
    """

    def __init__(self, clip: CLIP, lock_image: bool = False, lock_text: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.lock_image, self.lock_text = lock_image, lock_text

    def train(self, mode: bool = True) -> TwoTower:
        """Train mode, except a locked tower, which stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        if self.lock_image:
            self.clip.visual.eval()
        if self.lock_text:
            self.clip.text.eval()
        return self

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.lock_image):
            img = self.clip.encode_image(pixels, normalize=True)  # [B, E]
        # A locked tower whose head (or last blocks) still trains keeps autograd on; frozen parameters record
        # nothing anyway.
        text_trains = any(p.requires_grad for p in self.clip.text.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and (not self.lock_text or text_trains)):
            txt = self.clip.encode_text(ids, normalize=True)  # [B, E]
        if self.clip.logit_bias is not None:  # the sigmoid loss's bias, after the scale
            return img, txt, self.clip.logit_scale.exp(), self.clip.logit_bias
        return img, txt, self.clip.logit_scale.exp()


def wrap_model(module: TwoTower, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """DDP (replicated weights, all-reduced grads) or FSDP2 (each block sharded over ranks)."""
    if not info.distributed:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        clip = module.clip
        broadcast_from_rank0(module)
        text_stack = clip.text.transformer.blocks if hasattr(clip.text, "transformer") else next(
            m for m in clip.text.encoder.modules() if isinstance(m, nn.ModuleList))  # a pretrained LM tower
        blocks = list(text_stack)
        if hasattr(clip.visual, "transformer"):
            blocks += list(clip.visual.transformer.blocks)
        for block in blocks:
            fully_shard(block)
        # FSDP2 cannot shard 0-dim parameters: logit_scale (and a logit bias) stay replicated and their
        # gradients are averaged by sync_replicated_grads() after backward.
        fully_shard(module, ignored_params=set(_scalars(clip)))
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def broadcast_from_rank0(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank: FSDP shards each rank's own tensors, and random
    inits differ by rank (DDP broadcasts them itself)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t, src=0)


def sync_replicated_grads(model: nn.Module) -> None:
    """Average the gradients FSDP2 leaves alone (its ignored, replicated ``logit_scale`` and logit bias); no-op
    otherwise."""
    if not (hasattr(model, "unshard") and dist.is_available() and dist.is_initialized()):
        return
    for p in _scalars(unwrap(model).clip):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def _scalars(clip: CLIP) -> list[nn.Parameter]:
    """The model's 0-dim parameters: the temperature, and the sigmoid loss's bias where there is one."""
    return [clip.logit_scale] + ([clip.logit_bias] if clip.logit_bias is not None else [])


def unwrap(model: nn.Module) -> TwoTower:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy); identity in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _opts(full: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True)


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CLIP state dict on CPU (gathered from shards under FSDP; every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(unwrap(model).clip, options=_opts())
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter names, full and on CPU (so it reloads on any world size)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model).clip, optimizer, options=_opts())


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(unwrap(model).clip, state, options=_opts())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model).clip, optimizer, state, options=_opts())
