"""``torchclip train``: a config file plus ``--section.key=value`` overrides; ``--resume`` continues a run.

    torchclip train --config configs/emoji.yaml --run.output_dir=runs/emoji
    torchclip train --config runs/emoji/config.json --resume          # continue after a crash
    torchrun --nproc-per-node=8 -m torchclip.train --config run.yaml   # one node, 8 GPUs

A run folder holds one run: training into a folder that already holds one is refused unless ``--resume``
continues it or ``--overwrite`` replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..cli import CommandError, CommandParser, UsageError, add_overwrite, add_quiet, command
from .config import load_config

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="torchclip train", description="CLIP contrastive training from a typed run config.",
        epilog="Every config key can be overridden: --section.key=value (e.g. --optim.lr=1e-3 "
               "--data.train='shards/{000..099}.tar'). Unknown keys are errors. --print-config shows all keys.")
    p.add_argument("--config", type=Path, help="YAML or JSON run config (a run folder's config.json works)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue the run in run.output_dir from its newest intact checkpoint (or from the "
                        "given file); with no checkpoint yet, start it")
    add_overwrite(p, "the run already in run.output_dir (its checkpoints, logs, model and tokenizer)")
    add_quiet(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def _train(argv: list[str]) -> int:
    known, overrides = build_parser().parse_known_args(argv)
    if known.config is not None and not known.config.is_file():
        raise UsageError(f"config file {known.config} does not exist")
    if known.resume and known.overwrite:
        raise UsageError("--resume continues the run in the folder and --overwrite replaces it: give one")
    if known.quiet:
        overrides.append("--run.progress=false")
    try:
        cfg = load_config(known.config, overrides)
    except (ValueError, TypeError) as e:
        where = f"{known.config}: " if known.config and str(known.config) not in str(e) else ""
        raise UsageError(f"{where}{e}") from None
    if known.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if not cfg.data.train:
        raise UsageError("no training data (set data.train in the config or --data.train=...)")
    resume: bool | str = False
    if known.resume == "latest":
        resume = True
    elif known.resume:
        if not Path(known.resume).is_file():
            raise UsageError(f"checkpoint {known.resume} does not exist (--resume alone takes the newest in "
                             "run.output_dir)")
        resume = known.resume
    from . import distributed
    from .loop import NonFiniteLossError, RunFolderError, train

    try:
        train(cfg, resume=resume, overwrite=known.overwrite)
    except NonFiniteLossError as e:
        raise CommandError(str(e), status=3) from e
    except RunFolderError as e:
        raise UsageError(str(e)) from e
    finally:
        distributed.cleanup()
    if os.environ.get("RANK", "0") == "0":
        out = Path(cfg.run.output_dir)
        tok = out / ("tokenizer.json" if cfg.model.text_tower else "tokenizer.txt.gz")
        print(f"run folder: {out}\nmodel:      {out / 'model.safetensors'}\ntokenizer:  {tok}")
    return 0


main = command("torchclip train", _train)


if __name__ == "__main__":
    raise SystemExit(main())
