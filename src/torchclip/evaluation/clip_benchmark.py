"""Interop with CLIP_benchmark: a model loader in its ``(model, transform, tokenizer)`` contract, its
result-JSON layout, and the model + tokenizer resolution the ``torchclip eval`` command shares.

CLIP_benchmark has no plugin hook (reference §8): loaders live in its ``TYPE2FUNC`` dict and
``MODEL_TYPES`` list. ``register()`` adds ``torchclip`` to both at runtime, after which its own command line
evaluates our models::

    python -c "import sys; from torchclip.evaluation.clip_benchmark import register; register();
               from clip_benchmark.cli import main; sys.exit(main())" eval --model_type torchclip \\
               --model cpu-vit-64 --pretrained run/checkpoint.safetensors --dataset cifar10 --no_amp

(``torchclip eval clip-benchmark ...`` does the same.) Pass ``--no_amp``: CLIP_benchmark's default autocast
runs bf16 on CPU, which costs fp32 parity.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..api import create_model, load
from ..model import CLIP
from ..readers import find_vocabulary as find_tokenizer
from ..tokenizer import Tokenizer, check_compatible, load_tokenizer
from ..transforms import image_transform

__all__ = ["BenchmarkTokenizer", "find_tokenizer", "resolve_tokenizer", "load_model", "load_torchclip",
           "register", "benchmark_json", "write_benchmark_json", "run_clip_benchmark"]



class BenchmarkTokenizer:
    """``tokenizer(list_of_str) -> LongTensor [N, ctx]`` at the model's context length, truncating.

    CLIP_benchmark calls the tokenizer with a list of strings only; long captions must be cut (its
    open_clip tokenizers truncate) rather than raise, or one long COCO caption aborts a whole run.
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.context_length, truncate=True)

    def __repr__(self) -> str:
        return f"BenchmarkTokenizer({self.tokenizer!r}, context_length={self.context_length})"


def resolve_tokenizer(model: CLIP, tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
                      checkpoint: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer for ``model``: the one given (object or path), else one saved with the checkpoint,
    else OpenAI's vocabulary if the model's text tower has OpenAI's id layout.

    The result is checked against the model's text config, so a model trained with its own vocabulary
    fails here with the disagreeing sizes named, not later with features pooled at the wrong token.
    """
    ctx = model.config.text.context_length
    bundled = getattr(model, "tokenizer", None)
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        tok = tokenizer  # a tokenizer object: torchclip's BPE or a pretrained language model's
    elif tokenizer is None and bundled is not None:
        tok = bundled  # the vocabulary the checkpoint carries
    else:
        source = tokenizer if tokenizer is not None else (find_tokenizer(checkpoint) if checkpoint else None)
        if source is None and model.config.text.vocab_size != 49408:
            raise ValueError(
                f"the model has its own vocabulary ({model.config.text.vocab_size} ids) and no tokenizer was "
                "found next to the checkpoint; pass the merges file it was trained with (--tokenizer)")
        tok = load_tokenizer(source, context_length=ctx)
    # Evaluation always tokenizes at the model's context length, so only the id layout must agree.
    check_compatible(tok, dataclasses.replace(model.config.text, context_length=tok.context_length))
    return tok


def load_model(model: str | os.PathLike[str], pretrained: str | os.PathLike[str] | None = None,
               device: str | torch.device = "cpu") -> tuple[CLIP, Path | None]:
    """A model from the usual spellings: a checkpoint path; a preset with ``pretrained`` = ``openai`` or a
    checkpoint path; or a preset with no/``random`` weights (useful as the chance baseline).
    Returns the model (eval mode) and the checkpoint path it came from, if any."""
    if pretrained not in (None, "", "random", "none"):
        if str(pretrained) == "openai":
            m, _ = load(str(model), device=device)
            return m, None
        path = Path(pretrained)
        if not path.exists():
            raise FileNotFoundError(f"pretrained weights {path} do not exist")
        m, _ = load(path, device=device)
        return m, path
    if Path(model).exists():
        m, _ = load(model, device=device)
        return m, Path(model)
    return create_model(str(model), device=device).eval(), None


def load_torchclip(model_name: str, pretrained: str | None = None, cache_dir: str | None = None,
                   device: str | torch.device = "cpu", **_: Any) -> tuple[CLIP, Callable[[Any], torch.Tensor], BenchmarkTokenizer]:
    """CLIP_benchmark's loader contract: ``(model, transform, tokenizer)``.

    ``model_name``: a preset or a checkpoint path; ``pretrained``: ``openai``, a checkpoint path, or empty.
    ``cache_dir`` sets ``$TORCHCLIP_CACHE`` for downloads when given. A tokenizer saved next to the
    checkpoint is used, else ``$TORCHCLIP_TOKENIZER``, else OpenAI's vocabulary.
    """
    if cache_dir:
        os.environ.setdefault("TORCHCLIP_CACHE", str(cache_dir))
    model, ckpt = load_model(model_name, pretrained, device)
    tok = resolve_tokenizer(model, os.environ.get("TORCHCLIP_TOKENIZER") or None, ckpt)
    return model, image_transform(model.config.vision.image_size), BenchmarkTokenizer(
        tok, model.config.text.context_length)


def register(name: str = "torchclip") -> None:
    """Make CLIP_benchmark's ``--model_type torchclip`` load torchclip models (it must be importable)."""
    try:
        from clip_benchmark import models as cb_models
    except ImportError as e:
        raise ImportError("CLIP_benchmark is not installed (pip install clip-benchmark open_clip_torch)") from e
    cb_models.TYPE2FUNC[name] = load_torchclip
    types = getattr(cb_models, "MODEL_TYPES", None)
    if isinstance(types, list) and name not in types:
        types.append(name)  # the CLI's argparse choices hold this same list object


def run_clip_benchmark(argv: Sequence[str]) -> int:
    """Run CLIP_benchmark's command line with the torchclip loader registered."""
    register()
    from clip_benchmark.cli import main as cb_main

    saved = sys.argv
    sys.argv = ["clip_benchmark", *argv]
    try:
        return int(cb_main() or 0)
    finally:
        sys.argv = saved


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN is not JSON; CLIP_benchmark's files hold NaN as null
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item"):
        return _json_safe(v.item())
    return v


def benchmark_json(*, dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, Any],
                   language: str = "en", **extra: Any) -> dict[str, Any]:
    """A result in CLIP_benchmark's layout: ``{"dataset", "model", "pretrained", "task", "metrics",
    "language"}``; ``extra`` keys (templates, seeds...) are appended after those, so tools reading the
    standard keys are unaffected."""
    tasks = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "few_shot_linear_probe")
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(tasks)}")
    doc = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
           "metrics": _json_safe(metrics), "language": language}
    doc.update(_json_safe(extra))
    return doc


def write_benchmark_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
