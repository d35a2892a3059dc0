"""CLIP training: typed run config, exact gradient accumulation, atomic resumable checkpoints, torchrun.

    torchclip train --config run.yaml --optim.lr=1e-3
    python -m torchclip.train --config run.yaml --resume

The library never imports this package; it imports the library.
"""

from .config import TrainConfig, load_config
from .loop import accumulate_gradients, train

__all__ = ["TrainConfig", "load_config", "train", "accumulate_gradients"]
