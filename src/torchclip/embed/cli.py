"""``torchclip embed``: the command line over :func:`torchclip.embed.embed_source`.

Examples::

    torchclip embed photos/ --model ViT-B/32 --out emb/                      # folder -> npy + ids.jsonl
    torchclip embed 'shards/train-{000..009}.tar' --model ckpt.safetensors --out emb.safetensors
    torchclip embed images.csv --path-column file --id-column key --model ckpt/ --out emb/ --ids parquet
    torchclip embed captions.txt --model ckpt/ --out text-emb/                 # one text per line
    torchclip embed 'https://host/shards/train-{000..099}.tar' --model ViT-B/32 --out emb/
    torchclip embed 's3://bucket/shards/train-{000..099}.tar' --model ViT-B/32 --out emb/
    torchrun --nproc-per-node 8 --no-python torchclip embed 'shards/train-{0000..1023}.tar' --model ViT-B/32 --out emb/

Shards may be local paths, brace patterns, 'pipe:COMMAND', http(s) or s3:// gs:// az:// URLs (credentials
from the usual environment). Under torchrun (or with --rank/--world-size) each process embeds its share and
the last one to finish merges everything into one store at --out. Rerunning an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..cli import CommandParser, UsageError, add_overwrite, add_quiet, command, nonnegative_int, positive_int
from .modelspec import add_model_arguments, spec_from_args

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip embed", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="a folder, .tar shards (brace patterns ok), a .csv/.tsv, or a .txt/.jsonl")
    p.add_argument("--out", required=True, help="output folder (npy) or file ending in .safetensors")
    p.add_argument("--modality", choices=["image", "text"],
                   help="what to embed (default: text for .txt/.jsonl, image otherwise)")
    p.add_argument("--path-column", help="CSV column with image paths (default: path/filepath/file/image)")
    p.add_argument("--text-column", help="CSV/JSONL column with texts (default: text/caption/title)")
    p.add_argument("--id-column", help="CSV/JSONL column with ids (default: the path, or the row/line number)")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=nonnegative_int, default=None,
                   help="decoding processes (default: one per core beyond the first, 1 to 8; 0 decodes in-process)")
    p.add_argument("--draft", action="store_true",
                   help="decode JPEGs much larger than the model input at reduced size (faster decoding; "
                        "changes features slightly, so off by default)")
    p.add_argument("--draft-factor", type=float, default=2.0, metavar="F",
                   help="with --draft, keep at least F x the model resolution before the exact resize (default 2)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored vector type")
    p.add_argument("--no-normalize", action="store_true", help="store raw features instead of unit vectors")
    p.add_argument("--ids", choices=["jsonl", "parquet"], default="jsonl", help="id table format (npy output)")
    p.add_argument("--part-size", type=positive_int, default=8192,
                   help="rows per committed part (resume granularity)")
    add_overwrite(p, "a finished or unfinished output at --out")
    add_quiet(p)
    p.add_argument("--rank", type=nonnegative_int, default=None,
                   help="this process's rank in a distributed run (default: $RANK, as torchrun sets it)")
    p.add_argument("--world-size", type=positive_int, default=None,
                   help="processes in a distributed run (default: $WORLD_SIZE, as torchrun sets it, else 1)")
    return p


def _embed(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .runner import dist_from_env, embed_source
    from .sources import open_source

    spec = spec_from_args(args)
    assert spec is not None
    fmt = "safetensors" if args.out.endswith(".safetensors") else "npy"
    env_rank, env_world = dist_from_env()
    rank = env_rank if args.rank is None else args.rank
    world = env_world if args.world_size is None else args.world_size
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"--rank {rank} is not in --world-size {world}")
    out = Path(args.out)
    if not args.overwrite and (out.is_file() if fmt == "safetensors" else (out / "meta.json").is_file()):
        raise UsageError(f"{out} already holds finished embeddings: pass --overwrite to replace them, or choose "
                         "another --out (an unfinished output is resumed)")
    device = args.device
    if device == "cuda" and world > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per process on each machine
    progress = not args.quiet and rank == 0
    source = open_source(args.inputs, args.modality, path_column=args.path_column,
                         text_column=args.text_column, id_column=args.id_column)
    model = spec.load_model(device)
    tokenizer = spec.load_tokenizer(model) if source.modality == "text" else None
    total = source.for_rank(rank, world).count() if progress else None
    result = embed_source(
        source, model, args.out, tokenizer=tokenizer, model_spec=spec, batch_size=args.batch_size,
        workers=args.workers, draft_factor=args.draft_factor if args.draft else None,
        normalize=not args.no_normalize, dtype=args.dtype, fmt=fmt, ids_format=args.ids,
        part_size=args.part_size, overwrite=args.overwrite, progress=progress, total=total,
        rank=rank, world_size=world,
    )
    resumed = f", resumed after {result.resumed_from} items" if result.resumed_from else ""
    who = f"rank {rank}/{world}: " if world > 1 else ""
    print(f"{who}wrote {result.rows} embeddings to {result.out} ({result.errors} failed{resumed}; "
          f"{result.new_items} items in {result.seconds:.1f}s, {result.items_per_second:.1f}/s)")
    if world > 1:
        print(f"{who}merged all ranks into {result.out}" if result.merged
              else f"{who}{result.pending}; the last rank to finish merges them into {args.out}")
    if result.errors:
        print("failed items are listed in the errors file next to the output", file=sys.stderr)
    return 0


main = command("torchclip embed", _embed)


if __name__ == "__main__":  # torchrun -m torchclip.embed.cli ...
    sys.exit(main())
