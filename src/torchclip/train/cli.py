"""``torchclip train``: a config file plus ``--section.key=value`` overrides; ``--resume`` continues a run.

    torchclip train --config configs/emoji.yaml --run.output_dir=runs/emoji
    torchclip train --config runs/emoji/config.json --resume          # continue after a crash
    torchrun --nproc-per-node=8 -m torchclip.train --config run.yaml   # one node, 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import load_config

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchclip train", description="CLIP contrastive training from a typed run config.",
        epilog="Every config key can be overridden: --section.key=value (e.g. --optim.lr=1e-3 "
               "--data.train='shards/{000..099}.tar'). Unknown keys are errors. --print-config shows all keys.")
    p.add_argument("--config", type=Path, help="YAML or JSON run config (a run folder's config.json works)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint in run.output_dir, or from the given file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known, overrides = build_parser().parse_known_args(argv)
    try:
        cfg = load_config(known.config, overrides)
    except (ValueError, TypeError) as e:
        print(f"torchclip train: {e}", file=sys.stderr)
        return 2
    if known.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if not cfg.data.train:
        print("torchclip train: no training data (set data.train in the config or --data.train=...)", file=sys.stderr)
        return 2
    from . import distributed
    from .loop import NonFiniteLossError, train

    resume: bool | str = False
    if known.resume == "latest":
        resume = True
    elif known.resume:
        resume = known.resume
    try:
        train(cfg, resume=resume)
    except NonFiniteLossError as e:
        print(f"torchclip train: {e}", file=sys.stderr)
        return 3
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
