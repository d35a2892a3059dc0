"""Reading and writing checkpoints in every supported format, detected from the file itself.

| format | how it is recognised | how it is read |
| --- | --- | --- |
| torchclip | ``.safetensors`` with ``torchclip_config`` metadata, or a folder with ``torchclip.json`` | safetensors |
| OpenAI TorchScript archive | zip with ``<name>/data.pkl`` and ``<name>/code/`` | ``torchscript.py``: no code executed |
| OpenAI / OpenCLIP state dict | any other ``torch.save`` file | ``torch.load(weights_only=True)`` |
| OpenCLIP training checkpoint | ``torch.save`` dict with ``state_dict`` (``module.`` prefix stripped) | same |
| HF ``CLIPModel`` folder | ``config.json`` with ``model_type: clip`` + ``model.safetensors`` | safetensors |

No pickle code is ever executed. Half-precision tensors are upcast to fp32; fp32 tensors stay exactly as
stored (rounding a user's fp32 weights through fp16 would change features by ~1e-3).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import CLIPConfig, canonical_name
from .formats import (
    OPENAI_NON_WEIGHT_KEYS,
    CheckpointError,
    check_state_dict,
    hf_config_to_torchclip,
    hf_to_openai,
    infer_openai_config,
    openai_to_hf,
    openai_to_torchclip,
    torchclip_to_hf_config,
    torchclip_to_openai,
)
from .model import CLIP

__all__ = ["LoadedCheckpoint", "read_checkpoint", "load_model", "save", "save_hf", "save_openai"]

FORMAT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    config: CLIPConfig
    state_dict: dict[str, torch.Tensor]  # torchclip names, fp16/bf16 upcast to fp32
    format: str  # "torchclip", "openai-torchscript", "openai", "open_clip", "hf"
    path: Path


def _upcast(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16):
            v = v.float()
        out[k] = v
    return out


def _fix_logit_scale(sd: dict[str, torch.Tensor]) -> None:
    # Some files store logit_scale as [1] (openai/CLIP#66); the model's parameter is 0-dim.
    for key in ("logit_scale", "logit_bias"):
        if key in sd and sd[key].shape == (1,):
            sd[key] = sd[key].reshape(())


def _drop_non_weights(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in sd.items()
        if k.rsplit(".", 1)[-1] not in OPENAI_NON_WEIGHT_KEYS and isinstance(v, torch.Tensor)
    }


def _open_clip_activation(name: Any) -> str:
    """OpenCLIP builds its named models with nn.GELU unless the name says ``-quickgelu``."""
    if isinstance(name, str) and name.endswith("-quickgelu"):
        return "quick_gelu"
    if isinstance(name, str) and canonical_name(name) is not None:
        return "gelu"
    return "quick_gelu"


def _from_openai_layout(sd: dict[str, Any], path: Path, fmt: str, activation: str | None,
                        default_activation: str = "quick_gelu") -> LoadedCheckpoint:
    sd = _upcast(_drop_non_weights(sd))
    _fix_logit_scale(sd)
    where = str(path)
    config = infer_openai_config(sd, where, activation=activation or default_activation)
    return LoadedCheckpoint(config, openai_to_torchclip(sd, where), fmt, path)


def _read_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: truncated or corrupt ({e})") from e
    except Exception as e:  # pickle.UnpicklingError and friends: a file weights_only refuses
        raise CheckpointError(f"{path}: refused by the weights-only loader (not a plain tensor file): {e}") from e


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: truncated or corrupt ({e})") from e


def read_checkpoint(path: str | os.PathLike[str], activation: str | None = None) -> LoadedCheckpoint:
    """Detect the format of ``path`` (file or folder) and return our config and state dict.

    ``activation`` overrides the activation the format implies ("quick_gelu" for OpenAI layouts).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if (path / "torchclip.json").exists():
            return read_checkpoint(path / "model.safetensors", activation)
        cfg_file = path / "config.json"
        if cfg_file.exists():
            cfg = json.loads(cfg_file.read_text())
            if cfg.get("model_type") != "clip":
                raise CheckpointError(f"{cfg_file}: model_type {cfg.get('model_type')!r} is not an HF CLIPModel")
            weights = path / "model.safetensors"
            if not weights.exists():
                raise CheckpointError(f"{path}: HF folder has no model.safetensors (convert .bin files first)")
            sd, _ = _read_safetensors(weights)
            config = hf_config_to_torchclip(cfg, str(cfg_file))
            if activation:
                config = config.replace(activation=activation)
            oa = _upcast(hf_to_openai(sd, str(weights)))
            return LoadedCheckpoint(config, openai_to_torchclip(oa, str(weights)), "hf", path)
        raise CheckpointError(f"{path}: folder holds neither torchclip.json nor an HF config.json")
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
        if "torchclip_config" in meta:
            config = CLIPConfig.from_dict(json.loads(meta["torchclip_config"]))
            if activation:
                config = config.replace(activation=activation)
            return LoadedCheckpoint(config, sd, "torchclip", path)
        if any(k.startswith("text_model.") for k in sd):
            raise CheckpointError(f"{path}: HF weights need their config.json: load the folder instead")
        return _from_openai_layout(sd, path, "open_clip", activation)
    from .torchscript import is_torchscript_archive, read_torchscript_tensors

    if is_torchscript_archive(path):
        return _from_openai_layout(read_torchscript_tensors(path), path, "openai-torchscript", activation)
    obj = _read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        if next(iter(sd), "").startswith("module."):
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        return _from_openai_layout(sd, path, "open_clip", activation, _open_clip_activation(obj.get("name")))
    if "torchclip_config" in obj and "model" in obj:  # our training checkpoints
        config = CLIPConfig.from_dict(obj["torchclip_config"])
        return LoadedCheckpoint(config, _upcast(obj["model"]), "torchclip", path)
    return _from_openai_layout(obj, path, "openai", activation)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu",
               activation: str | None = None) -> CLIP:
    """Build the model a checkpoint describes and load its weights strictly, shapes checked first."""
    ckpt = read_checkpoint(path, activation)
    # Built on the meta device, the module allocates nothing and skips the random init that the loaded
    # weights would overwrite (seconds for the large models); ``assign`` then adopts the loaded tensors.
    with torch.device("meta"):
        model = CLIP(ckpt.config)
    check_state_dict(ckpt.state_dict, model.state_dict(), str(ckpt.path))
    # safetensors hands out views into the file's mapping at 4- or 8-byte offsets; torch's allocator aligns
    # to 64. oneDNN's and MKL's kernels can round differently on differently aligned weights: a ViT saved and
    # loaded gave batch-1 features 1 ulp off the original. Adopt owned, aligned copies instead.
    state = {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in ckpt.state_dict.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cpu_state(model: CLIP) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """Save in torchclip's format: ``x.safetensors`` (config in the metadata) or a folder.

    A folder gets ``model.safetensors`` plus a human-readable ``torchclip.json``. Writes are atomic.
    """
    path = Path(path)
    meta = {"torchclip_config": json.dumps(model.config.to_dict()), "format_version": str(FORMAT_VERSION)}
    target = path if path.suffix == ".safetensors" else path / "model.safetensors"
    state = _cpu_state(model)
    _atomic_write(target, lambda tmp: save_file(state, tmp, metadata=meta))
    if target is not path:
        doc = json.dumps({"format_version": FORMAT_VERSION, "config": model.config.to_dict()}, indent=2)
        _atomic_write(path / "torchclip.json", lambda tmp: Path(tmp).write_text(doc))
    return path


def save_openai(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """A plain ``torch.save`` state dict in OpenAI's layout (loads in openai/CLIP and OpenCLIP)."""
    path = Path(path)
    sd = torchclip_to_openai(_cpu_state(model))
    _atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def save_hf(model: CLIP, folder: str | os.PathLike[str]) -> Path:
    """An HF transformers ``CLIPModel`` folder (config.json + model.safetensors); ViT models only."""
    folder = Path(folder)
    cfg = torchclip_to_hf_config(model.config)
    sd = openai_to_hf(torchclip_to_openai(_cpu_state(model)))
    _atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    _atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2)))
    return folder
