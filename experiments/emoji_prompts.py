"""Category zero-shot with better class prompts (issue #20): strategies fixed here before any score was read,
chosen on the select concepts (held-out *train* concepts) by the protocol's rule, then scored once on val.

Each strategy turns the 9 category labels into class vectors using label-side text only (the category name,
the names of its Unicode subcategories, a one-line description written from the category name); no image
and no concept name of any split is used, so the classifier stays zero-shot for every image it scores.

    python experiments/emoji_prompts.py score RUN [RUN ...] --sets select --json runs/protocol/prompts-select.json
    python experiments/emoji_prompts.py choose runs/protocol/prompts-select.json
    python experiments/emoji_prompts.py summary runs/protocol/prompts-val.json --strategy described+subcat
    python experiments/emoji_prompts.py write described+subcat --out experiments/emoji_category_prompts.json

``write`` gives a strategy as a ``torchclip eval zeroshot --class-prompts`` file (every strategy but
``subcat-max``, which scores a category as its best subcategory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_protocol import DATA, SETS, interval  # noqa: E402

TRAIN_TEMPLATES = ("an emoji of {}.", "an emoji of {}", "{}", "a {} emoji.")
# one line per category, written from the category's name before any strategy was scored
DESCRIPTIONS = {
    "Activities": "an emoji of a sport, a game, a hobby or a celebration.",
    "Animals & Nature": "an emoji of an animal or a plant.",
    "Flags": "an emoji of a flag.",
    "Food & Drink": "an emoji of food or a drink.",
    "Objects": "an emoji of an everyday object or a tool.",
    "People & Body": "an emoji of a person, a hand or a part of the body.",
    "Smileys & Emotion": "an emoji of a face showing an emotion.",
    "Symbols": "an emoji of a symbol or a sign.",
    "Travel & Places": "an emoji of a place, a building, a vehicle or the weather.",
}
STRATEGIES = ("plain", "templates", "described", "subcat-mean", "subcat-max", "described+subcat")


def taxonomy(data: Path = DATA) -> dict[str, list[str]]:
    """category -> its subcategories, from the label metadata of the train shards (the Unicode taxonomy)."""
    import tarfile
    out: dict[str, set[str]] = {}
    with tarfile.open(data / "google-train.tar") as t:
        for m in t:
            if m.name.endswith(".json"):
                d = json.loads(t.extractfile(m).read())
                out.setdefault(d["category"], set()).add(d["subcategory"])
    return {c: sorted(s) for c, s in out.items()}


def class_prompts(strategy: str, category: str, tax: dict[str, list[str]]) -> list[list[str]]:
    """One category's prompt groups under a strategy (``torchclip.evaluation.build_prompt_classifier``'s
    input; groups weigh the same)."""
    subcats = [f"an emoji of {s.replace('-', ' ')}." for s in tax[category]]
    return {"plain": [[f"an emoji of {category}."]],
            "templates": [[t.format(category) for t in TRAIN_TEMPLATES]],
            "described": [[DESCRIPTIONS[category]]],
            "subcat-mean": [subcats],
            "described+subcat": [[DESCRIPTIONS[category]], subcats]}[strategy]


def category_scores(strategy: str, image_emb, model, tok, categories: list[str], tax: dict[str, list[str]]):
    """[N, C] scores of unit image embeddings against the categories under one strategy."""
    import torch

    from torchclip.evaluation import build_prompt_classifier

    if strategy == "subcat-max":  # each category scores as its best subcategory
        cols = []
        for c in categories:
            sub = build_prompt_classifier(model, tok, [[p] for p in class_prompts("subcat-mean", c, tax)[0]],
                                          cache_dir=False)  # [E, S]
            cols.append((image_emb @ sub).max(dim=1).values)
        return torch.stack(cols, dim=1)
    w = build_prompt_classifier(model, tok, [class_prompts(strategy, c, tax) for c in categories], cache_dir=False)
    return image_emb @ w  # [N, C]


def score(run: str, which: str, folder: Path, tax: dict[str, list[str]], activation: str | None = None,
          tokenizer: str | None = None) -> dict[str, dict[str, float]]:
    """{strategy: {'<set>/category/acc1': value}} for one checkpoint."""
    import torch

    from torchclip.api import get_tokenizer
    from torchclip.checkpoints import load_model
    from torchclip.tokenizer import Tokenizer
    from torchclip.train.evaluate import image_embeddings, load_eval_sets

    model = load_model(run, activation=activation).eval()
    tok = (Tokenizer.from_file(tokenizer, context_length=model.config.text.context_length) if tokenizer
           else get_tokenizer(model))

    specs = [f"{n}={'::'.join(str(folder / f'{s}.tar') for s in shards)}" for n, shards in SETS[which].items()]
    out: dict[str, dict[str, float]] = {s: {} for s in STRATEGIES}
    with torch.no_grad():
        for es in load_eval_sets(specs, model.config.vision.image_size):
            img = image_embeddings(model, es.pixels, torch.device("cpu"), 256)
            keep = [i for i, m in enumerate(es.meta) if m["category"] != "Component"]
            categories = sorted({es.meta[i]["category"] for i in keep})
            labels = torch.tensor([categories.index(es.meta[i]["category"]) for i in keep])
            for strategy in STRATEGIES:
                pred = category_scores(strategy, img[keep], model, tok, categories, tax).argmax(dim=1)
                out[strategy][f"{es.name}/category/acc1"] = float((pred == labels).float().mean())
    return out


def choose(results: dict[str, dict[str, dict[str, float]]]) -> tuple[str, dict[str, float]]:
    """The rule: the strategy with the highest mean of in-style, openmoji and fluent-flat category top-1,
    averaged over the checkpoints scored (name R@1, the rule's fourth key, does not depend on it)."""
    keys = ("in-style/category/acc1", "openmoji/category/acc1", "fluent-flat/category/acc1")
    values = {s: 100 * statistics.fmean(statistics.fmean(r[s][k] for k in keys) for r in results.values())
              for s in STRATEGIES}
    return max(values, key=values.__getitem__), values


def summary(results: dict[str, dict[str, dict[str, float]]], strategy: str) -> str:
    """Markdown: per recipe (label up to '/seed'), category top-1 per set as mean +- 95% half-width."""
    groups: dict[str, list[dict[str, float]]] = {}
    for label, by in results.items():
        groups.setdefault(label.split("/seed")[0], []).append(by[strategy])
    sets = ("in-style", "openmoji", "fluent-flat")
    lines = [f"| recipe ({strategy}) | n | " + " | ".join(f"category {s}" for s in sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for recipe, runs in groups.items():
        cells = []
        for s in sets:
            m, h = interval([100 * r[f"{s}/category/acc1"] for r in runs])
            cells.append(f"{m:.1f}" + ("" if h != h else f" ± {h:.1f}"))
        lines.append(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add_score_parser(sub)
    c = sub.add_parser("choose")
    c.add_argument("json", type=Path)
    m = sub.add_parser("summary")
    m.add_argument("json", type=Path)
    m.add_argument("--strategy", default="described+subcat", choices=STRATEGIES)
    w = sub.add_parser("write")
    w.add_argument("strategy", choices=[s for s in STRATEGIES if s != "subcat-max"])
    w.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "summary":
        print(summary(json.loads(args.json.read_text()), args.strategy))
        return 0
    if args.cmd == "write":
        tax = taxonomy()
        doc = {c: class_prompts(args.strategy, c, tax) for c in sorted(tax) if c != "Component"}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    if args.cmd == "choose":
        chosen, values = choose(json.loads(args.json.read_text()))
        for name, v in sorted(values.items(), key=lambda kv: -kv[1]):
            print(f"{name}: {v:.1f}", file=sys.stderr)
        print(chosen)
        return 0
    tax = taxonomy()
    return run_scores(p, args, lambda run, folder: score(run, args.sets, folder, tax, args.activation,
                                                         args.tokenizer))


def add_score_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``score`` subcommand's arguments (shared with emoji_names.py)."""
    s = sub.add_parser("score")
    s.add_argument("runs", nargs="+")
    s.add_argument("--sets", choices=tuple(SETS), required=True)
    s.add_argument("--folder", type=Path)
    s.add_argument("--json", type=Path, required=True)
    s.add_argument("--label", help="the key in the json (default: the run's path; one run only)")
    s.add_argument("--activation")
    s.add_argument("--tokenizer", help="a merges file, for checkpoints that do not carry their vocabulary")
    return s


def run_scores(p: argparse.ArgumentParser, args: argparse.Namespace,
               score_one: Callable[[str, Path], dict[str, dict[str, float]]]) -> int:
    """Score every run into the JSON (kept up to date after each), printing each run's top-1 per set."""
    folder = args.folder or (Path("runs/emoji-protocol/data") if args.sets == "select" else DATA)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    if args.label and len(args.runs) != 1:
        p.error("--label names one run")
    for run in args.runs:
        label = args.label or run
        results[label] = score_one(run, folder)
        print(label, json.dumps({s: {k.split("/")[0]: round(100 * v, 1) for k, v in m.items()}
                                 for s, m in results[label].items()}))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
