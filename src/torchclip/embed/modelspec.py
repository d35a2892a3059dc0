"""How a command names its model, and how that name is stored so another command can rebuild the model.

``torchclip index``/``search``/``serve`` must encode queries with *the same model and vocabulary* that made
the stored embeddings, or similarities are meaningless. So ``torchclip embed`` records a :class:`ModelSpec`
in its metadata (a checkpoint path, or a preset name with weights, or a seeded random initialisation for
tests and benchmarks, plus the tokenizer), and later commands rebuild the model from it unless told
otherwise.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the command-line parsers built here must not import torch
    import torch

    from ..model import CLIP
    from ..tokenizer import Tokenizer

__all__ = ["ModelSpec", "add_model_arguments", "spec_from_args", "find_tokenizer"]


@dataclass(frozen=True)
class ModelSpec:
    """``model``: a checkpoint path (stored absolute) or a preset name; ``random_init``: build the preset
    with random weights from ``seed`` (no download; for tests and speed measurements); ``tokenizer``: a
    merges file or an HF folder with ``vocab.json`` + ``merges.txt`` (None: the checkpoint folder's own
    vocabulary if it has one, else OpenAI's)."""

    model: str
    random_init: bool = False
    seed: int = 0
    tokenizer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(model=str(d["model"]), random_init=bool(d.get("random_init", False)),
                   seed=int(d.get("seed", 0)), tokenizer=d.get("tokenizer"))

    def normalized(self) -> ModelSpec:
        """Paths made absolute, so the spec still works from another working directory."""
        model = self.model
        if not self.random_init and os.path.exists(model):
            model = os.path.abspath(model)
        tok = os.path.abspath(self.tokenizer) if self.tokenizer else None
        return ModelSpec(model, self.random_init, self.seed, tok)

    def load_model(self, device: str | torch.device = "cpu") -> CLIP:
        """The model in eval mode. Random init is seeded with a private generator state, so it is the same
        model on every call and the caller's global RNG is left alone."""
        import torch

        from ..api import create_model, load

        if self.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = create_model(self.model)
            return model.to(device).eval()
        model, _ = load(self.model, device=device)
        return model.eval()

    def load_tokenizer(self, model: CLIP | None = None) -> Tokenizer:
        """The tokenizer for this model, checked against the model's text config when one is given."""
        from ..tokenizer import check_compatible, load_tokenizer

        source = self.tokenizer or find_tokenizer(self.model)
        ctx = model.config.text.context_length if model is not None else 77
        bundled = getattr(model, "tokenizer", None) if not self.tokenizer else None
        tok = bundled if bundled is not None else load_tokenizer(source, context_length=ctx)
        if model is not None:
            try:
                check_compatible(tok, model.config.text)
            except ValueError as exc:
                raise ValueError(
                    f"{exc}. The model {self.model!r} needs its own vocabulary: pass it with --tokenizer"
                ) from None
        return tok


def find_tokenizer(model: str) -> str | None:
    """The vocabulary shipped with a checkpoint (``torchclip.readers.find_vocabulary``); None: OpenAI's."""
    from ..readers import find_vocabulary

    found = find_vocabulary(model) if Path(model).exists() else None
    return None if found is None else str(found)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The ``--model/--random-init/--seed/--tokenizer/--device`` options every command shares."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", required=required,
                   help="checkpoint file/folder, or a preset name (downloads OpenAI weights; see --random-init)")
    g.add_argument("--random-init", action="store_true",
                   help="build the preset with random weights (seeded): for tests and speed measurements")
    g.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    g.add_argument("--tokenizer", help="merges file or HF folder (vocab.json + merges.txt) for this model")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")


def spec_from_args(args: argparse.Namespace) -> ModelSpec | None:
    if not getattr(args, "model", None):
        return None
    return ModelSpec(args.model, args.random_init, args.seed, args.tokenizer).normalized()
