"""The emoji benchmark under a protocol whose numbers transfer (issue #20.3).

* Recipes are chosen on a split of the *train* concepts: ``split`` holds out every fifth concept group
  (by a hash of ``concept_group``, so an emoji's variants stay together) of google-train and twitter-train
  as ``select`` (in-style), and the same concepts of openmoji-train and fluent-flat-train (new styles).
  Candidates train on the rest (``fit``) and are scored on ``select``; nothing about ``val`` is read.
* The chosen recipe trains on all of the train concepts with several seeds and is scored on the val
  concepts once per run; ``summary`` reports the mean and a 95% t-interval over seeds.

    python experiments/emoji_protocol.py split --out runs/emoji-protocol/data
    python experiments/emoji_protocol.py score RUN_OR_CKPT --sets select|val --label NAME --json results.json
    python experiments/emoji_protocol.py summary results.json [--prefix NAME]

The scorer is benchmarks/emoji_train.py's (the same code for torchclip and OpenCLIP checkpoints), with the
model's own tokenizer when the checkpoint carries one.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import statistics
import sys
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emoji"
SELECT_EVERY = 5  # one concept group in five is held out for choosing recipes
STYLES = ("google", "twitter", "openmoji", "fluent-flat")
SETS = {
    "select": {"in-style": ("google-train-select", "twitter-train-select"), "openmoji": ("openmoji-train-select",),
               "fluent-flat": ("fluent-flat-train-select",)},
    "val": {"in-style": ("google-val", "twitter-val"), "openmoji": ("openmoji-val",), "fluent-flat": ("fluent-flat-val",)},
}
KEYS = ("name", "category", "subcategory")
TEMPLATES = ("an emoji of {}.",)


def is_select(concept_group: str, fold: int = 0) -> bool:
    """Whether a concept group is held out in ``fold`` (0 is the protocol's select split; folds 0-4 partition
    the train concepts, for cross-validation)."""
    return int(hashlib.sha1(concept_group.encode()).hexdigest(), 16) % SELECT_EVERY == fold


def split(out: Path, data: Path = DATA, fold: int = 0) -> dict[str, int]:
    """Write ``<style>-train-fit.tar`` and ``<style>-train-select.tar`` for every style; returns the counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for style in STYLES:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(data / f"{style}-train.tar") as t:
            for m in t:
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    samples.setdefault(key, {})[ext] = t.extractfile(m).read()
        parts = {"fit": [], "select": []}
        for key, members in samples.items():
            group = json.loads(members["json"])["concept_group"]
            parts["select" if is_select(group, fold) else "fit"].append((key, members))
        for part, rows in parts.items():
            path = out / f"{style}-train-{part}.tar"
            with tarfile.open(path, "w") as t:
                for key, members in rows:
                    for ext, blob in sorted(members.items()):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(blob)
                        t.addfile(info, io.BytesIO(blob))
            counts[path.name] = len(rows)
    return counts


def score(checkpoint: str, which: str, folder: Path, activation: str | None = None,
          tokenizer: str | None = None) -> dict[str, float]:
    import torch

    from torchclip.api import get_tokenizer
    from torchclip.checkpoints import load_model
    from torchclip.tokenizer import Tokenizer
    from torchclip.train.evaluate import evaluate_sets, load_eval_sets

    model = load_model(checkpoint, activation=activation)
    tok = (Tokenizer.from_file(tokenizer, context_length=model.config.text.context_length) if tokenizer
           else get_tokenizer(model))
    specs = [f"{name}={'::'.join(str(folder / f'{s}.tar') for s in shards)}" for name, shards in SETS[which].items()]
    sets = load_eval_sets(specs, model.config.vision.image_size)
    with torch.no_grad():
        return evaluate_sets(model, tok, sets, KEYS, TEMPLATES, exclude=("Component",))


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a two-sided 95% Student-t interval (NaN for a single value).

    The quantile is scipy's for every sample size: a table up to 10 values with 1.96 beyond (the normal
    quantile) made the intervals of 11-30 values 4-12% too narrow, which flipped the trimming decision."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def summary(results: dict[str, dict[str, float]], prefix: str | None = None) -> str:
    """Markdown: per recipe (label up to '/seed'), each headline metric as mean +- 95% half-width (n)."""
    groups: dict[str, list[dict[str, float]]] = {}
    for label, metrics in results.items():
        recipe = label.split("/seed")[0]
        if prefix is None or recipe.startswith(prefix):
            groups.setdefault(recipe, []).append(metrics)
    cols = [("in-style/name/acc1", "name R@1 in-style"), ("openmoji/name/acc1", "openmoji"),
            ("fluent-flat/name/acc1", "fluent-flat"), ("in-style/category/acc1", "category acc in-style"),
            ("openmoji/category/acc1", "openmoji"), ("fluent-flat/category/acc1", "fluent-flat"),
            ("in-style/subcategory/acc1", "subcategory acc1 in-style")]
    head = "| recipe | n | " + " | ".join(c for _, c in cols) + " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for recipe, runs in groups.items():
        cells = []
        for key, _ in cols:
            vals = [100 * r[key] for r in runs if key in r]
            if not vals:
                cells.append("-")
                continue
            m, h = interval(vals)
            cells.append(f"{m:.1f}" + ("" if math.isnan(h) else f" ± {h:.1f}"))
        lines.append(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


RULE_KEYS = ("in-style/category/acc1", "openmoji/category/acc1", "fluent-flat/category/acc1", "in-style/name/acc1")


def choose(results: dict[str, dict[str, float]], prefix: str = "sel-lit",
           categories: dict[str, dict[str, float]] | None = None) -> tuple[str, dict[str, float]]:
    """The rule, fixed before any run: the candidate (label up to '-seed') whose mean over ``RULE_KEYS``,
    averaged over its seeds, is highest on the select concepts. Returns it and every candidate's value.
    ``categories`` (label -> '<set>/category/acc1' values, e.g. under the class prompts chosen by
    experiments/emoji_prompts.py) replaces the category accuracies measured with the training templates."""
    groups: dict[str, list[float]] = {}
    for label, metrics in results.items():
        if label.startswith(prefix):
            if categories is not None:
                if label not in categories:
                    raise KeyError(f"{label}: no category scores under the class prompts")
                metrics = {**metrics, **categories[label]}
            value = 100 * statistics.fmean(metrics[k] for k in RULE_KEYS)
            groups.setdefault(label.split("-seed")[0], []).append(value)
    values = {name: statistics.fmean(v) for name, v in groups.items()}
    return max(values, key=values.__getitem__), values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--out", type=Path, default=Path("runs/emoji-protocol/data"))
    s.add_argument("--fold", type=int, choices=range(SELECT_EVERY), default=0,
                   help="which fifth of the train concepts to hold out (0: the protocol's select split)")
    s.add_argument("--data", type=Path, default=DATA)
    c = sub.add_parser("score")
    c.add_argument("checkpoint")
    c.add_argument("--sets", choices=tuple(SETS), required=True)
    c.add_argument("--folder", type=Path, help="where the shards are (default: the split's output for select, "
                   "../shared/data/emoji for val)")
    c.add_argument("--label", required=True)
    c.add_argument("--json", type=Path, required=True)
    c.add_argument("--activation")
    c.add_argument("--tokenizer", help="a merges file, for checkpoints that do not carry their vocabulary")
    m = sub.add_parser("summary")
    m.add_argument("json", type=Path)
    m.add_argument("--prefix")
    k = sub.add_parser("choose", help="print the candidate the rule picks from a select.json (values on stderr)")
    k.add_argument("json", type=Path)
    k.add_argument("--prompts", type=Path, help="experiments/emoji_prompts.py scores on select, whose --strategy "
                   "category accuracies replace the template ones")
    k.add_argument("--strategy", default="described+subcat")
    args = p.parse_args(argv)
    if args.cmd == "choose":
        cats = None
        if args.prompts:
            scored = json.loads(args.prompts.read_text())
            cats = {Path(run).name: by[args.strategy] for run, by in scored.items()}
        chosen, values = choose(json.loads(args.json.read_text()), categories=cats)
        for name, v in sorted(values.items(), key=lambda kv: -kv[1]):
            print(f"{name}: {v:.1f}", file=sys.stderr)
        print(chosen)
        return 0
    if args.cmd == "split":
        for name, n in split(args.out, args.data, args.fold).items():
            print(f"wrote {args.out / name} ({n} samples)")
        return 0
    if args.cmd == "score":
        folder = args.folder or (Path("runs/emoji-protocol/data") if args.sets == "select" else DATA)
        metrics = score(args.checkpoint, args.sets, folder, args.activation, args.tokenizer)
        results = json.loads(args.json.read_text()) if args.json.exists() else {}
        results[args.label] = metrics
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(json.dumps({k: round(v, 4) for k, v in metrics.items() if "/acc1" in k}))
        return 0
    print(summary(json.loads(args.json.read_text()), args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
