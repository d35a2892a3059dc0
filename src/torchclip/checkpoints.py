"""Building a model from a checkpoint, and writing checkpoints in torchclip's, OpenAI's, OpenCLIP's and HF's
layouts. Reading is ``readers.py``: one reader per source behind ``read_checkpoint``.

A loaded model carries its bundle: ``model.preprocess_config`` (image size, mean/std, interpolation, resize
mode) and ``model.tokenizer`` (the vocabulary it was trained with; None means OpenAI's). Every writer
records what its format can hold of both, and of the MLP activation.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .config import CLIPConfig, HFTextConfig, PreprocessConfig
from .formats import (
    CheckpointError,
    check_state_dict,
    openai_to_hf,
    torchclip_to_hf_config,
    torchclip_to_hf_preprocess_config,
    torchclip_to_open_clip_config,
    torchclip_to_openai,
)
from .model import CLIP
from .readers import LoadedCheckpoint, read_checkpoint

__all__ = ["LoadedCheckpoint", "read_checkpoint", "load_model", "build_model", "preprocess_config_of",
           "save", "save_hf", "save_openai", "save_open_clip"]

FORMAT_VERSION = 1


def preprocess_config_of(model: CLIP) -> PreprocessConfig:
    """The preprocessing a model was loaded with, else OpenAI's at the model's image size."""
    pp = getattr(model, "preprocess_config", None)
    return pp if pp is not None else PreprocessConfig(image_size=model.config.vision.image_size)


def build_model(ckpt: LoadedCheckpoint) -> CLIP:
    """The model ``ckpt`` describes, its weights loaded strictly, shapes checked before anything is copied."""
    # Built on the meta device, the module allocates nothing and skips the random init that the loaded
    # weights would overwrite; ``assign`` then adopts the loaded tensors.
    with torch.device("meta"):
        model = CLIP(ckpt.config)
    check_state_dict(ckpt.state_dict, model.state_dict(), str(ckpt.path))
    # safetensors hands out views at 4- or 8-byte offsets, torch's allocator aligns to 64: oneDNN's and MKL's
    # kernels can round differently on differently aligned weights, so adopt owned, aligned copies.
    state = {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in ckpt.state_dict.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.preprocess_config = ckpt.preprocess or PreprocessConfig(image_size=ckpt.config.vision.image_size)
    model.tokenizer = ckpt.tokenizer
    if ckpt.tokenizer is not None:
        from .tokenizer import check_compatible

        try:
            check_compatible(ckpt.tokenizer, ckpt.config.text)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.path}: the bundled vocabulary does not fit the model: {e}") from e
    return model.eval()


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu", activation: str | None = None,
               config: CLIPConfig | None = None) -> CLIP:
    """Read any checkpoint (``readers.read_checkpoint``) and build its model in eval mode on ``device``.

    ``config``: the architecture asked for (``create_model(name, pretrained=path)``); a file whose tensors do
    not fit it is refused as a different architecture.
    """
    ckpt = read_checkpoint(path, activation, config)
    try:
        return build_model(ckpt).to(device)
    except CheckpointError as e:
        if config is None:
            raise
        raise CheckpointError(f"{path} holds a different architecture than the one asked for: {e}") from e


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


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _clip_text_tower(model: CLIP, layout: str) -> None:
    """Foreign layouts hold CLIP's own text transformer only."""
    if isinstance(model.config.text, HFTextConfig):
        raise CheckpointError(f"{layout} has no place for a pretrained language model as the text tower: save it "
                              "with torchclip.save (a .safetensors file or folder), which keeps it whole")


def _no_logit_bias(model: CLIP, layout: str) -> None:
    """OpenAI's and HF's CLIP have no logit bias; dropping it would change a sigmoid-loss model's scores."""
    if model.config.init_logit_bias is not None:
        raise CheckpointError(f"{layout} has no place for a logit bias (a model trained with the sigmoid loss): "
                              "save it with torchclip.save or save_open_clip, which keep it")


def _cpu_state(model: CLIP) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _own_tokenizer(model: CLIP) -> Any:
    """The vocabulary the model was loaded or trained with; None means OpenAI's, which readers assume."""
    return getattr(model, "tokenizer", None)


def save(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """Save in torchclip's format: ``x.safetensors`` (config in the metadata) or a folder.

    The file is a whole bundle: config, preprocessing and (when it is not OpenAI's) the vocabulary travel in
    the metadata. A folder gets ``model.safetensors`` plus a human-readable ``torchclip.json``. Writes are
    atomic.
    """
    path = Path(path)
    pp = preprocess_config_of(model)
    meta = {"torchclip_config": json.dumps(model.config.to_dict()), "format_version": str(FORMAT_VERSION),
            "torchclip_preprocess": json.dumps(pp.to_dict())}
    tok = _own_tokenizer(model)
    if hasattr(tok, "to_json"):  # a pretrained language model's tokenizer (torchclip.hf_text)
        meta["torchclip_tokenizer_hf"] = tok.to_json()
    elif tok is not None:
        meta["torchclip_tokenizer_merges"] = "#version: 0.2 torchclip\n" + "".join(f"{a} {b}\n" for a, b in tok.merges)
    target = path if path.suffix == ".safetensors" else path / "model.safetensors"
    state = _cpu_state(model)
    _atomic_write(target, lambda tmp: save_file(state, tmp, metadata=meta))
    if target is not path:
        doc = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "preprocess": pp.to_dict()}
        _write_text(path / "torchclip.json", json.dumps(doc, indent=2))
    return path


def save_openai(model: CLIP, path: str | os.PathLike[str]) -> Path:
    """A plain ``torch.save`` state dict in OpenAI's layout (loads in openai/CLIP and OpenCLIP).

    The layout has no place for the activation or a vocabulary: openai/CLIP always builds QuickGELU, so a
    GELU model is written with a warning saying how to load it correctly.
    """
    path = Path(path)
    _clip_text_tower(model, "OpenAI's layout")
    _no_logit_bias(model, "OpenAI's layout")
    if model.config.activation != "quick_gelu":
        warnings.warn(f"{path}: OpenAI's state-dict layout cannot record the {model.config.activation!r} "
                      "activation: load it with activation='gelu' (torchclip) or a GELU architecture name "
                      "(open_clip.create_model('ViT-B-32', pretrained=path)); save_open_clip() records it",
                      UserWarning, stacklevel=2)
    sd = torchclip_to_openai(_cpu_state(model))
    _atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def save_open_clip(model: CLIP, folder: str | os.PathLike[str]) -> Path:
    """OpenCLIP's hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors`` +
    ``open_clip_pytorch_model.bin``; loads with ``open_clip.create_model('local-dir:<folder>')`` and
    ``torchclip.load(folder)``."""
    folder = Path(folder)
    _clip_text_tower(model, "OpenCLIP's layout")
    pp = preprocess_config_of(model)
    doc = {"model_cfg": torchclip_to_open_clip_config(model.config),
           "preprocess_cfg": {"size": pp.image_size, "mean": list(pp.mean), "std": list(pp.std),
                              "interpolation": pp.interpolation, "resize_mode": pp.resize_mode}}
    sd = torchclip_to_openai(_cpu_state(model))
    _atomic_write(folder / "open_clip_model.safetensors", lambda tmp: save_file(sd, tmp))
    _atomic_write(folder / "open_clip_pytorch_model.bin", lambda tmp: torch.save(sd, tmp))
    _write_text(folder / "open_clip_config.json", json.dumps(doc, indent=2))
    tok = _own_tokenizer(model)
    if tok is not None:
        tok.save(folder / "tokenizer.txt.gz")
    return folder


def save_hf(model: CLIP, folder: str | os.PathLike[str], tokenizer: Any = None) -> Path:
    """An HF transformers folder that ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` load:
    config.json, model.safetensors, preprocessor_config.json and the tokenizer files (``tokenizer``, else
    the model's own vocabulary, else OpenAI's); ViT models only."""
    from .tokenizer import check_compatible, load_tokenizer

    folder = Path(folder)
    _clip_text_tower(model, "HF's CLIPModel")
    _no_logit_bias(model, "HF's CLIPModel")
    cfg = torchclip_to_hf_config(model.config)
    sd = openai_to_hf(torchclip_to_openai(_cpu_state(model)))
    pp = torchclip_to_hf_preprocess_config(preprocess_config_of(model))
    _atomic_write(folder / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    _write_text(folder / "config.json", json.dumps(cfg, indent=2))
    _write_text(folder / "preprocessor_config.json", json.dumps(pp, indent=2))
    t = model.config.text
    tok = tokenizer or _own_tokenizer(model)
    if tok is None and t.vocab_size == 49408:
        tok = load_tokenizer(context_length=t.context_length)
    if tok is None:
        warnings.warn(f"{folder}: no vocabulary for this model's {t.vocab_size}-token text tower: tokenizer files "
                      "not written (pass tokenizer=); CLIPProcessor.from_pretrained will not load the folder",
                      UserWarning, stacklevel=2)
        return folder
    check_compatible(tok, t)
    tok.save_hf(folder)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": tok.decoder[t.pad_id]}
    _write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2))
    _write_text(folder / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": t.context_length, "do_lower_case": True,
        "errors": "replace", **special}, indent=2))
    return folder
