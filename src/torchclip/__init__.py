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

# submodule -> the public names it defines, imported on first use: `import torchclip` (and the command
# line's --help) needs no torch until a model, tokenizer or transform is asked for
_EXPORTS = {
    "api": ("available_models", "load", "create_model", "get_tokenizer"),
    "tokenizer": ("tokenize", "Tokenizer"),
    "pretrained": ("list_pretrained",),
    "checkpoints": ("load_model", "save", "save_hf", "save_open_clip"),
    "model": ("CLIP", "CLIPOutput"),
    "config": ("CLIPConfig",),
    "transforms": ("image_transform",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .api import available_models as available_models
    from .api import create_model as create_model
    from .api import get_tokenizer as get_tokenizer
    from .api import load as load
    from .checkpoints import load_model as load_model
    from .checkpoints import save as save
    from .checkpoints import save_hf as save_hf
    from .checkpoints import save_open_clip as save_open_clip
    from .config import CLIPConfig as CLIPConfig
    from .model import CLIP as CLIP
    from .model import CLIPOutput as CLIPOutput
    from .pretrained import list_pretrained as list_pretrained
    from .tokenizer import Tokenizer as Tokenizer
    from .tokenizer import tokenize as tokenize
    from .transforms import image_transform as image_transform
