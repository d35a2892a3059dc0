"""``torchclip index``: build a FAISS index over the output of ``torchclip embed``.

Examples::

    torchclip index emb/ --out idx/                            # exact below 100k vectors, IVF above
    torchclip index emb/ --out idx/ --kind hnsw --target-recall 0.98
    torchclip index emb/ --out idx/ --labels classes.txt --templates 'a photo of a {}.'

IVF and HNSW indexes report their measured recall@k against exact search.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import CommandParser, UsageError, add_overwrite, command, positive_int
from ..embed.modelspec import add_model_arguments, spec_from_args

__all__ = ["build_parser", "main"]

INDEX_FILES = ("index.json", "index.faiss", "records.jsonl")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip index", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("embeddings", help="output of torchclip embed: a folder or a .safetensors file")
    p.add_argument("--out", required=True, help="index folder to write")
    add_overwrite(p, "an index already in --out")
    p.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"], default="auto",
                   help="auto: exact up to 100k vectors, IVF beyond")
    p.add_argument("--nlist", type=positive_int, help="IVF lists (default ~sqrt(n))")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node, 2 to 512 (default 32)")
    p.add_argument("--ef-construction", type=positive_int, default=80, help="HNSW build beam width")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="pick the smallest nprobe/efSearch reaching this recall@k, in (0, 1] (default 0.95)")
    p.add_argument("--recall-k", type=positive_int, default=10, help="k of the recall measurement (default 10)")
    p.add_argument("--tune-queries", help="embeddings of typical queries (e.g. embedded captions) to measure "
                                          "recall on, instead of collection items")
    p.add_argument("--labels", help="zero-shot label set: a file (one per line / JSON) or 'cat,dog,...'")
    p.add_argument("--templates", help="prompt templates for the labels: a name, a file or 'a photo of a {}.'")
    p.add_argument("--root", help="folder the indexed files live in (default: the one embed recorded)")
    add_model_arguments(p, required=False)
    return p


def _index(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..embed.store import load_embeddings
    from .index import ClipIndex, check_build_options
    from .labels import load_label_names, resolve_templates

    # everything that can be refused is refused before the embeddings are read
    try:
        check_build_options(args.kind, nlist=args.nlist, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                            target_recall=args.target_recall, k=args.recall_k)
        labels = load_label_names(args.labels) if args.labels else None
        if args.templates:
            resolve_templates(args.templates)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    out = Path(args.out)
    existing = [name for name in INDEX_FILES if (out / name).exists()]
    if existing and not args.overwrite:
        raise UsageError(f"{out} already holds an index ({', '.join(existing)}): pass --overwrite to replace it, "
                         "or choose another --out")
    emb = load_embeddings(args.embeddings)
    spec = spec_from_args(args)
    meta = {
        "embeddings": str(args.embeddings),
        "model": spec.to_dict() if spec else emb.meta.get("model"),
        "modality": emb.meta.get("modality"),
        "source_kind": (emb.meta.get("source") or {}).get("kind"),
        "root": args.root or (emb.meta.get("source") or {}).get("root"),
        "labels": labels,
        "templates": args.templates,
    }
    tune = load_embeddings(args.tune_queries).vectors if args.tune_queries else None
    index = ClipIndex.build(emb.vectors, emb.records, meta, kind=args.kind, nlist=args.nlist,
                            hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                            target_recall=args.target_recall, k=args.recall_k, tune_queries=tune)
    index.save(out)
    info = index.meta["index"]
    line = f"wrote {info['kind']} index of {info['count']} x {info['dim']} to {out}"
    if info["kind"] != "flat":
        name = "nprobe" if info["kind"] == "ivf" else "efSearch"
        line += f" ({name} {info['search_param']}: recall@{info['recall_k']} {info['recall_at_k']:.3f})"
        if info["recall_at_k"] < args.target_recall:
            print(f"warning: target recall {args.target_recall} not reached", file=sys.stderr)
    print(line)
    return 0


main = command("torchclip index", _index)
