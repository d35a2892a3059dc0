"""torchclip: CLIP (Radford et al., 2021) in PyTorch.

Faithful models (the nine released architectures plus small CPU presets), OpenAI's tokenizer exactly,
loading of OpenAI, OpenCLIP and HF checkpoints, OpenAI-exact preprocessing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import attach

__version__ = "0.1.0"

# public name -> the submodule defining it, imported on first use: `import torchclip` (and the command
# line's --help) needs no torch until a model, tokenizer or transform is asked for
_EXPORTS = {
    "available_models": "api",
    "create_model": "api",
    "load": "api",
    "pretrained_models": "api",
    "get_tokenizer": "api",
    "load_model": "checkpoints",
    "read_checkpoint": "checkpoints",
    "save": "checkpoints",
    "save_hf": "checkpoints",
    "save_openai": "checkpoints",
    "save_open_clip": "checkpoints",
    "CLIPConfig": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "get_preset": "config",
    "ChecksumError": "download",
    "DownloadError": "download",
    "cache_dir": "download",
    "CheckpointError": "formats",
    "clip_loss": "loss",
    "gather_features": "loss",
    "siglip_loss": "loss",
    "CLIP": "model",
    "CLIPOutput": "model",
    "clamp_logit_scale_": "optim",
    "cosine_schedule": "optim",
    "param_groups": "optim",
    "download_pretrained": "pretrained",
    "list_pretrained": "pretrained",
    "pretrained_url": "pretrained",
    "ContextLengthError": "tokenizer",
    "Tokenizer": "tokenizer",
    "check_compatible": "tokenizer",
    "load_tokenizer": "tokenizer",
    "tokenize": "tokenizer",
    "OPENAI_MEAN": "transforms",
    "OPENAI_STD": "transforms",
    "ImageDecodeError": "transforms",
    "image_transform": "transforms",
    "load_image": "transforms",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)


__all__ = [
    "ContextLengthError",
    "Tokenizer",
    "check_compatible",
    "clamp_logit_scale_",
    "clip_loss",
    "cosine_schedule",
    "gather_features",
    "load_tokenizer",
    "param_groups",
    "siglip_loss",
    "tokenize",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ChecksumError",
    "DownloadError",
    "ImageDecodeError",
    "cache_dir",
    "download_pretrained",
    "list_pretrained",
    "load_image",
    "pretrained_url",
    "CLIP",
    "CLIPConfig",
    "CLIPOutput",
    "CheckpointError",
    "TextConfig",
    "VisionConfig",
    "available_models",
    "create_model",
    "get_preset",
    "image_transform",
    "load",
    "load_model",
    "pretrained_models",
    "read_checkpoint",
    "save",
    "save_hf",
    "save_openai",
    "save_open_clip",
    "get_tokenizer",
]

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .api import available_models, create_model, get_tokenizer, load, pretrained_models
    from .checkpoints import load_model, read_checkpoint, save, save_hf, save_open_clip, save_openai
    from .config import CLIPConfig, TextConfig, VisionConfig, get_preset
    from .download import ChecksumError, DownloadError, cache_dir
    from .formats import CheckpointError
    from .loss import clip_loss, gather_features, siglip_loss
    from .model import CLIP, CLIPOutput
    from .optim import clamp_logit_scale_, cosine_schedule, param_groups
    from .pretrained import download_pretrained, list_pretrained, pretrained_url
    from .tokenizer import ContextLengthError, Tokenizer, check_compatible, load_tokenizer, tokenize
    from .transforms import OPENAI_MEAN, OPENAI_STD, ImageDecodeError, image_transform, load_image
