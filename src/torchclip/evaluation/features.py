"""Feature extraction with an on-disk cache, and the tokenizer adapter every text path goes through.

Encoding images dominates every evaluation here (the probe's L-BFGS sweep and the metrics take seconds),
and the same features serve zero-shot, probes, few-shot seeds and retrieval. So features are computed once
per (model weights, images, preprocessing, feature kind) and stored as safetensors under
``$TORCHCLIP_CACHE/eval/features``. The key hashes the weights themselves, not a file name: a checkpoint
overwritten by a later epoch can never be served stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..model import CLIP
from ..tokenizer import Tokenizer
from .datasets import ImageDataset

__all__ = [
    "FeatureKind",
    "cache_root",
    "model_fingerprint",
    "model_device",
    "tokenize_for",
    "encode_texts",
    "extract_image_features",
    "eval_mode",
]

FeatureKind = Literal["embedding", "pre_projection"]
TextTokenizer = Tokenizer | Callable[[list[str]], torch.Tensor]

_FP_MEMO: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where evaluation caches live: ``cache_dir``, else ``$TORCHCLIP_CACHE/eval``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("TORCHCLIP_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "torchclip") / "eval"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the config and every tensor of the state dict (names, dtypes, shapes, bytes).

    Memoised per model object and invalidated by any in-place update of a tensor (its version counter
    moves), so evaluating after each training epoch re-hashes while repeated calls in one run do not.
    """
    state = model.state_dict()
    versions = tuple((k, v._version, v.data_ptr()) for k, v in state.items())
    memo = _FP_MEMO.get(model)
    if memo is not None and memo[0] == versions:
        return memo[1]
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    digest = h.hexdigest()
    _FP_MEMO[model] = (versions, digest)
    return digest


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module):  # noqa: ANN201 - a context manager
    """Evaluate in eval mode (BatchNorm running statistics, no dropout), then restore the caller's mode:
    a trainer that evaluates mid-run must get its model back in training mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def tokenize_for(model: nn.Module, tokenizer: TextTokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Token ids for ``model``: a torchclip ``Tokenizer`` is run at the model's context length with
    truncation (CLIP_benchmark's behaviour for long captions); any other callable is called as
    ``tokenizer(list_of_str)``, the CLIP_benchmark contract."""
    texts = list(texts)
    if isinstance(tokenizer, Tokenizer):
        ctx = getattr(getattr(getattr(model, "config", None), "text", None), "context_length", None)
        return tokenizer(texts, context_length=ctx, truncate=True)
    ids = tokenizer(texts)
    return ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)


def encode_texts(model: CLIP, tokenizer: TextTokenizer, texts: Sequence[str], *, batch_size: int = 256,
                 progress: bool = False) -> torch.Tensor:
    """Unnormalized text features ``[N, E]`` (float32, CPU), in batches."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    device, out = model_device(model), []
    with eval_mode(model):
        for start in tqdm(range(0, len(texts), batch_size), desc="texts", disable=not progress, leave=False):
            ids = tokenize_for(model, tokenizer, texts[start:start + batch_size]).to(device)
            out.append(model.encode_text(ids).float().cpu())
    return torch.cat(out)


class _Pixels(Dataset):
    def __init__(self, dataset: ImageDataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset[i][0])


def _transform_key(transform: Callable[[Any], torch.Tensor]) -> str | None:
    """A stable description of the preprocessing, or None if it has none (then nothing is cached: an
    object's default repr holds a memory address that a different function could reuse later)."""
    text = repr(transform)
    return None if " at 0x" in text or " object at " in text else text


def _default_transform(model: CLIP) -> Callable[[Any], torch.Tensor]:
    from ..transforms import image_transform

    return image_transform(model.config.vision.image_size)


def extract_image_features(
    model: CLIP,
    dataset: ImageDataset,
    transform: Callable[[Any], torch.Tensor] | None = None,
    *,
    kind: FeatureKind = "embedding",
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | os.PathLike[str] | None | Literal[False] = None,
    progress: bool = True,
) -> torch.Tensor:
    """Image features ``[N, D]`` (float32, CPU, unnormalized), from the cache when possible.

    ``kind="embedding"`` is ``encode_image`` (zero-shot, retrieval; D = E); ``"pre_projection"`` is the
    representation before the projection, which the paper's linear probes use. ``cache_dir=False`` turns
    the cache off. The model runs on its own device and dtype, in eval mode.
    """
    if kind not in ("embedding", "pre_projection"):
        raise ValueError(f"unknown feature kind {kind!r}")
    dataset.require_nonempty()
    transform = transform or _default_transform(model)
    path = None
    tkey = _transform_key(transform)
    if cache_dir is not False and tkey is not None:
        key = hashlib.sha256(
            f"{model_fingerprint(model)}|{dataset.fingerprint()}|{kind}|{tkey}".encode()).hexdigest()[:32]
        path = cache_root(cache_dir) / "features" / f"{dataset.name or 'data'}-{kind}-{key}.safetensors"
        if path.is_file():
            feats = load_file(path)["features"]
            if feats.shape[0] == len(dataset):
                return feats
    loader = DataLoader(_Pixels(dataset, transform), batch_size=batch_size, num_workers=num_workers,
                        shuffle=False)
    device, out = model_device(model), []
    with eval_mode(model):
        for pixels in tqdm(loader, desc=f"features {dataset.name}", disable=not progress, leave=False):
            pixels = pixels.to(device=device, dtype=model.dtype)
            # pre_projection: ViT's class token after norm_post, ResNet's attention pool before out_proj
            emb = model.encode_image(pixels, projected=kind == "embedding")
            out.append(emb.float().cpu())
    feats = torch.cat(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": feats.contiguous()}, str(tmp),
                  metadata={"dataset": dataset.name, "kind": kind, "transform": tkey, "n": str(len(dataset))})
        os.replace(tmp, path)
    return feats
