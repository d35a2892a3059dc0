"""``torchclip embed``: the command line over :func:`torchclip.embed.embed_source`.

Examples::

    torchclip embed photos/ --model ViT-B/32 --out emb/                      # folder -> npy + ids.jsonl
    torchclip embed 'shards/train-{000..009}.tar' --model ckpt.safetensors --out emb.safetensors
    torchclip embed images.csv --path-column file --id-column key --model ckpt/ --out emb/ --ids parquet
    torchclip embed captions.txt --model ckpt/ --out text-emb/                 # one text per line

Rerunning an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .modelspec import add_model_arguments, spec_from_args
from .runner import default_workers, embed_source
from .sources import open_source
from .store import ResumeError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchclip embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="a folder, .tar shards (brace patterns ok), a .csv/.tsv, or a .txt/.jsonl")
    p.add_argument("--out", required=True, help="output folder (npy) or file ending in .safetensors")
    p.add_argument("--modality", choices=["image", "text"],
                   help="what to embed (default: text for .txt/.jsonl, image otherwise)")
    p.add_argument("--path-column", help="CSV column with image paths (default: path/filepath/file/image)")
    p.add_argument("--text-column", help="CSV/JSONL column with texts (default: text/caption/title)")
    p.add_argument("--id-column", help="CSV/JSONL column with ids (default: the path, or the row/line number)")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help=f"decoding processes (default {default_workers()} here; 0 decodes in-process)")
    p.add_argument("--draft", action="store_true",
                   help="decode JPEGs much larger than the model input at reduced size (faster decoding; "
                        "changes features slightly, so off by default)")
    p.add_argument("--draft-factor", type=float, default=2.0, metavar="F",
                   help="with --draft, keep at least F x the model resolution before the exact resize (default 2)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored vector type")
    p.add_argument("--no-normalize", action="store_true", help="store raw features instead of unit vectors")
    p.add_argument("--ids", choices=["jsonl", "parquet"], default="jsonl", help="id table format (npy output)")
    p.add_argument("--part-size", type=int, default=8192, help="rows per committed part (resume granularity)")
    p.add_argument("--overwrite", action="store_true", help="discard a finished or unfinished output at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    assert spec is not None
    fmt = "safetensors" if args.out.endswith(".safetensors") else "npy"
    try:
        source = open_source(args.inputs, args.modality, path_column=args.path_column,
                             text_column=args.text_column, id_column=args.id_column)
        model = spec.load_model(args.device)
        tokenizer = spec.load_tokenizer(model) if source.modality == "text" else None
        total = None if args.no_progress else source.count()
        result = embed_source(
            source, model, args.out, tokenizer=tokenizer, model_spec=spec, batch_size=args.batch_size,
            workers=args.workers, draft_factor=args.draft_factor if args.draft else None,
            normalize=not args.no_normalize, dtype=args.dtype, fmt=fmt, ids_format=args.ids, part_size=args.part_size, overwrite=args.overwrite,
            progress=not args.no_progress, total=total,
        )
    except (ResumeError, ValueError, FileNotFoundError) as exc:
        print(f"torchclip embed: {exc}", file=sys.stderr)
        return 1
    resumed = f", resumed after {result.resumed_from} items" if result.resumed_from else ""
    print(f"{result.rows} embeddings -> {result.out} ({result.errors} failed{resumed}; "
          f"{result.new_items} items in {result.seconds:.1f}s, {result.items_per_second:.1f}/s)")
    if result.errors:
        print("failed items are listed in the errors file next to the output", file=sys.stderr)
    return 0
