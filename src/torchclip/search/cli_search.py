"""``torchclip search``: query an index by text or image; zero-shot labels for image queries.

Examples::

    torchclip search idx/ --text 'a dog on a beach' -k 5
    torchclip search idx/ --image query.jpg --labels 'cat,dog,car'
    torchclip search idx/ --similar photos/0001.jpg --json

The model comes from the index metadata (the one that embedded the collection) unless --model is given.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..cli import CommandParser, UsageError, command, positive_int
from ..embed.modelspec import add_model_arguments, spec_from_args

if TYPE_CHECKING:
    from .query import Hit, Searcher

__all__ = ["build_parser", "main", "add_searcher_arguments", "open_searcher"]


def add_searcher_arguments(p: argparse.ArgumentParser, labelled: str) -> None:
    """What :func:`open_searcher` opens: the index folder, its zero-shot labels for ``labelled`` (and their
    templates), and the model options."""
    p.add_argument("index", help="index folder written by torchclip index")
    p.add_argument("--labels", help=f"zero-shot label set for {labelled} (overrides the index's)")
    p.add_argument("--templates", help="prompt templates for the labels")
    add_model_arguments(p, required=False)


def open_searcher(args: argparse.Namespace) -> Searcher:
    """The index and model that :func:`add_searcher_arguments`' options name."""
    from .query import Searcher

    return Searcher.open(args.index, spec=spec_from_args(args), device=args.device, labels=args.labels,
                         templates=args.templates)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip search", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    q = p.add_argument_group("queries (repeatable, at least one)")
    q.add_argument("--text", action="append", default=[], help="text query")
    q.add_argument("--image", action="append", default=[], help="image file query")
    q.add_argument("--similar", action="append", default=[], help="id of an indexed item")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--top-labels", type=positive_int, default=5, help="labels shown per image query (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    add_searcher_arguments(p, "image queries")
    return p


def _print(query: dict[str, Any], hits: list[Hit], labels: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**query, "results": [h.to_dict() for h in hits], "labels": labels}, ensure_ascii=False))
        return
    kind, value = next(iter(query.items()))
    print(f"{kind}: {value}")
    for rank, h in enumerate(hits, 1):
        print(f"  {rank:>3}  {h.score:+.4f}  {h.id}")
    if labels:
        print("  labels: " + ", ".join(f"{d['label']} ({d['prob']:.2f})" for d in labels))


def _search(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not (args.text or args.image or args.similar):
        raise UsageError("give at least one --text, --image or --similar query")
    from ..embed.decode import open_image
    from .labels import load_label_names, resolve_templates

    try:
        if args.labels:
            load_label_names(args.labels)
        if args.templates:
            resolve_templates(args.templates)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    searcher = open_searcher(args)
    by_id = {str(r.get("id")): i for i, r in enumerate(searcher.index.records)} if args.similar else {}
    for text in args.text:
        _print({"text": text}, searcher.search_text(text, args.k), [], args.json)
    for path in args.image:
        img = open_image(path)
        vec = searcher.encode_image([img])
        labels = searcher.label_vector(vec, args.top_labels)
        _print({"image": path}, searcher.search_vector(vec, args.k), labels, args.json)
    for item in args.similar:
        if item not in by_id:
            raise ValueError(f"no indexed item with id {item!r}")
        row = by_id[item]
        labels = searcher.label_vector(searcher.index.vector(row), args.top_labels)
        _print({"similar": item}, searcher.similar(row, args.k), labels, args.json)
    return 0


main = command("torchclip search", _search)
