"""torchclip: CLIP (Radford et al., 2021) in PyTorch.

Faithful models (the nine released architectures plus small CPU presets), OpenAI's tokenizer exactly,
loading of OpenAI, OpenCLIP and HF checkpoints, OpenAI-exact preprocessing.
"""

from .api import available_models, create_model, load, pretrained_models
from .checkpoints import load_model, read_checkpoint, save, save_hf, save_openai
from .config import CLIPConfig, TextConfig, VisionConfig, get_preset
from .download import ChecksumError, DownloadError, cache_dir
from .formats import CheckpointError
from .loss import clip_loss, gather_features, siglip_loss
from .model import CLIP, CLIPOutput
from .optim import clamp_logit_scale_, cosine_schedule, param_groups
from .pretrained import download_pretrained, list_pretrained, pretrained_url
from .tokenizer import ContextLengthError, Tokenizer, check_compatible, load_tokenizer, tokenize
from .transforms import OPENAI_MEAN, OPENAI_STD, ImageDecodeError, image_transform, load_image

__version__ = "0.1.0"

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
]
