"""``torchclip`` command line: one dispatcher, each subcommand in its own module.

Subcommand modules are imported only when used, so ``torchclip eval`` never imports the trainer.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("torchclip.train.cli", "contrastive pre-training from a run config"),
    "eval": ("torchclip.evaluation.cli", "zero-shot, linear probe, few-shot and retrieval evaluation"),
    "embed": ("torchclip.embed.cli", "embed image collections or texts"),
    "index": ("torchclip.search.cli_index", "build a FAISS index over embeddings"),
    "search": ("torchclip.search.cli_search", "query an index by text or image"),
    "serve": ("torchclip.serve.app", "web app and JSON API over an index"),
    "export": ("torchclip.export", "ONNX export and int8 quantization"),
    "models": ("torchclip.cli", "list model presets"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: torchclip <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _models(argv: Sequence[str]) -> int:
    from .api import available_models, pretrained_models

    pretrained = set(pretrained_models())
    for name in available_models():
        print(f"{name:<16} {'openai weights' if name in pretrained else 'random init'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"torchclip: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "models":
        return _models(rest)
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"torchclip: command {name!r} is not available in this build ({e})", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
