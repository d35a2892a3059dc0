"""torchclip: CLIP (Radford et al., 2021) in PyTorch.

OpenAI's three functions (``available_models``, ``load``, ``tokenize``) plus a few names for building,
saving and feeding models. Everything else lives in its module: ``torchclip.config``, ``checkpoints``,
``formats``, ``tokenizer``, ``transforms``, ``download``, ``loss``, ``optim``, and the apps (``train``,
``evaluation``, ``embed``, ``search``, ``serve``, ``export``). ARCHITECTURE.md maps the rooms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import attach

__version__ = "0.1.0"

# public name -> the submodule defining it, imported on first use: `import torchclip` (and the command
# line's --help) needs no torch until a model, tokenizer or transform is asked for
_EXPORTS = {
    "available_models": "api",
    "load": "api",
    "tokenize": "tokenizer",
    "create_model": "api",
    "list_pretrained": "pretrained",
    "load_model": "checkpoints",
    "save": "checkpoints",
    "CLIP": "model",
    "CLIPOutput": "model",
    "CLIPConfig": "config",
    "Tokenizer": "tokenizer",
    "image_transform": "transforms",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "available_models",
    "load",
    "tokenize",
    "create_model",
    "list_pretrained",
    "load_model",
    "save",
    "CLIP",
    "CLIPOutput",
    "CLIPConfig",
    "Tokenizer",
    "image_transform",
]

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .api import available_models, create_model, load
    from .checkpoints import load_model, save
    from .config import CLIPConfig
    from .model import CLIP, CLIPOutput
    from .pretrained import list_pretrained
    from .tokenizer import Tokenizer, tokenize
    from .transforms import image_transform
