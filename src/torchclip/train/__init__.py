"""CLIP training: typed run config, exact gradient accumulation, atomic resumable checkpoints, torchrun.

    torchclip train --config run.yaml --optim.lr=1e-3
    python -m torchclip.train --config run.yaml --resume

The library never imports this package; it imports the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "config": ("TrainConfig", "load_config"),
    "loop": ("accumulate_gradients", "train"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .config import TrainConfig as TrainConfig
    from .config import load_config as load_config
    from .loop import accumulate_gradients as accumulate_gradients
    from .loop import train as train
