"""Name prompts for the emoji name retrieval (issue #20): the four training templates averaged, against the
single "an emoji of {}." that every number so far used.

The LiT recipes wrap half their training captions in four templates (``TRAIN_TEMPLATES``), so an ensemble of
them is in-distribution text for the names, as the paper's prompt ensembles are for ImageNet labels. Only
label-side text changes; no image, no concept name beyond the gallery's own names.

    python experiments/emoji_names.py score RUN [RUN ...] --sets select --folder runs/protocol/trim-select \
        --json runs/protocol/names-select-trim.json
    python experiments/emoji_names.py choose runs/protocol/names-select-trim.json

The rule, fixed before any name was scored this way: over the 20 LiT select checkpoints trained on the fit
concepts as before (the 19 of the trimming rule and the chosen recipe's third seed), on trimmed select images
(the adopted evaluation), the paired difference in in-style name R@1, ensemble minus single template. The
ensemble is adopted only if the 95% t-interval of that difference lies above zero; then, and only then, the
final checkpoints (chosen recipe and peer, 5 seeds each) are scored on val with it, once. (It was not:
+0.15 ± 0.19.)

Then a training lever aimed at names: the chosen recipe with the text tower's last 2 layers trained
(``sel-lit-style-rconv-unlock2``; alone, on the locked recipe, it gave the best select name R@1 of any
candidate, from one seed). Its rule, fixed before it trained: 3 seeds of it against the chosen recipe's 3, on
trimmed select images. Adopted only if the 95% Welch interval of the in-style name R@1 difference lies above
zero and the protocol's rule value does not fall on average (names must not be bought with categories).

    python experiments/emoji_names.py compare runs/protocol/select-trim.json \
        --prompts runs/protocol/prompts-select-trim.json sel-lit-style-rconv-unlock2 sel-lit-style-rconv

Trimming turned out not to be adopted by its own rule once its interval used Student's t (26200a4), so the
evaluation in force is on plain images, and both rules above are re-applied unchanged on plain select images
(``names-select.json``; ``compare runs/protocol/select.json --prompts runs/protocol/prompts-select.json``).
If the unlocked tower were adopted there, its 5 final seeds would train and be scored on val once.

Then a test-time lever aimed at names, fixed here before any checkpoint is scored with it: hubness
correction of the name classifier (``torchclip.evaluation.hubness_penalty``, the class term of CSLS). Each
name's score for an image is its cosine less half the mean cosine of that name with its 10 nearest images in
a bank of the model's own training images, never test images: for select checkpoints the google and twitter
fit shards, for the finals (the chosen recipe and the peer alike) the google and twitter train shards, all
plain. A name that sits near every image (a hub) stops winning images that fit a more specific name.
Rule: over the 23 LiT select checkpoints trained on plain fit images (the 20 above and the 3 unlocked ones),
on plain select images, the paired difference in in-style name R@1, corrected minus uncorrected, both with
the name prompts in force after the re-applied rule (``hubness --prompts``). Adopted only if the 95%
t-interval lies above zero; then, and only then, the final checkpoints of the chosen recipe and the peer
(5 seeds each) are scored on plain val images with it, once.

    python experiments/emoji_names.py score RUN [RUN ...] --sets select --json runs/protocol/names-select.json
    python experiments/emoji_names.py hubness runs/protocol/names-select.json --prompts single

(It was adopted on select, +0.61 ± 0.30, and then moved val the other way: 8.74 -> 8.39 for the chosen
recipe, 5.23 -> 5.08 for the peer. The unlock2 comparison above was re-applied with the incumbent's
first 3 seeds, the ones that existed then. Afterwards, a bootstrap over checkpoints *and* concept groups
showed the rule's interval had counted only the checkpoints' noise: +0.61 in [-0.04, +1.29] on select,
-0.35 in [-2.09, +1.21] on val, overlapping.)

    python experiments/emoji_names.py concepts RUN [RUN ...] --sets select --bank runs/emoji-protocol/data \
        --json runs/protocol/hits-select.json
    python experiments/emoji_names.py bootstrap runs/protocol/hits-select.json

Then a training lever aimed at names, fixed here before it trains: the chosen recipe with
``data.name_dropout: 0`` (``sel-lit-style-rconv-names``), so every caption keeps the concept's name; the
recipe drops it from 30% of captions, a setting #4 chose for a text tower learned from scratch, which had to
learn to match on keywords alone. A pretrained language tower already knows what a name means. Rule: 5 seeds
of it against 5 of the chosen recipe (its seeds 3 and 4 train for this), scored on plain select images with
the name score in force (hubness-corrected, ``--names``). Adopted only if the 95% Welch interval of the
in-style name R@1 difference lies above zero and the rule value (with that name score) does not fall on
average; then, and only then, its 5 final seeds train on all train concepts and are scored on val once.

    python experiments/emoji_names.py compare runs/protocol/select.json --prompts runs/protocol/prompts-select.json \
        --names runs/protocol/names-select.json sel-lit-style-rconv-names sel-lit-style-rconv

(Not adopted: name R@1 +1.06 ± 1.03, the first training lever whose interval cleared zero, but the rule value
fell by 0.68, from the categories: in-style -1.4, fluent-flat -2.1. Val not touched. Over seeds and concept
groups together the name gain lies in [-0.46, +2.66]:

    python experiments/emoji_names.py concepts runs/protocol/sel-lit-style-rconv{,-seed1,-seed2,-seed3,-seed4} \
        runs/protocol/sel-lit-style-rconv-names{,-seed1,-seed2,-seed3,-seed4} --sets select \
        --bank runs/emoji-protocol/data --json runs/protocol/hits-select-names.json
    python experiments/emoji_names.py bootstrap runs/protocol/hits-select-names.json \
        --recipes sel-lit-style-rconv-names sel-lit-style-rconv)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_prompts import TRAIN_TEMPLATES, add_score_parser, run_scores  # noqa: E402
from emoji_protocol import DATA, SETS, interval  # noqa: E402

PROMPTS = {"single": ("an emoji of {}.",), "templates": TRAIN_TEMPLATES}


HUBNESS_K = 10  # CSLS's k (Conneau et al. 2018), fixed with the rule
BANK = {"select": ("google-train-fit", "twitter-train-fit"), "val": ("google-train", "twitter-train")}


def score(run: str, which: str, folder: Path, activation: str | None = None, tokenizer: str | None = None,
          bank: Path | None = None, hits: dict[str, list] | None = None) -> dict[str, dict[str, float]]:
    """{prompts[+csls]: {'<set>/name/acc1': value}} for one checkpoint; ``+csls`` variants when a bank
    folder (holding the set's ``BANK`` shards: the model's training images) is given. ``hits`` receives
    each image's top-1 hit per '<set>|<variant>' and its concept group per '<set>|group'."""
    import torch

    from torchclip.api import get_tokenizer
    from torchclip.checkpoints import load_model
    from torchclip.data import load_eval_samples
    from torchclip.evaluation.metrics import topk_accuracy
    from torchclip.evaluation.zeroshot import hubness_penalty, zeroshot_logits
    from torchclip.tokenizer import Tokenizer
    from torchclip.train.evaluate import _classes, class_embeddings, image_embeddings, load_eval_sets

    model = load_model(run, activation=activation).eval()
    tok = (Tokenizer.from_file(tokenizer, context_length=model.config.text.context_length) if tokenizer
           else get_tokenizer(model))
    size, device = model.config.vision.image_size, torch.device("cpu")
    specs = [f"{n}={'::'.join(str(folder / f'{s}.tar') for s in shards)}" for n, shards in SETS[which].items()]
    sets = load_eval_sets(specs, size)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        bank_emb = None
        if bank is not None:
            pixels, _ = load_eval_samples("::".join(str(bank / f"{s}.tar") for s in BANK[which]), size)
            bank_emb = image_embeddings(model, pixels, device, 256)  # [M, E]
        for s in sets:
            img = image_embeddings(model, s.pixels, device, 256)  # [N, E]
            keep, classes = _classes(s, "name", ())
            index = {c: j for j, c in enumerate(classes)}
            labels = torch.tensor([index[s.meta[i]["name"]] for i in keep])
            if hits is not None:
                hits[f"{s.name}|group"] = [s.meta[i]["concept_group"] for i in keep]
            for name, templates in PROMPTS.items():
                cls = class_embeddings(model, tok, classes, templates, device).t()  # [E, C]
                variants = {name: None}
                if bank_emb is not None:
                    variants[f"{name}+csls"] = hubness_penalty(cls, bank_emb, HUBNESS_K)
                for v, penalty in variants.items():
                    logits = zeroshot_logits(img[keep], cls, penalty=penalty)
                    out.setdefault(v, {})[f"{s.name}/name/acc1"] = topk_accuracy(logits, labels, (1,))[1]
                    if hits is not None:
                        hits[f"{s.name}|{v}"] = (logits.argmax(1) == labels).int().tolist()
    return out


def _group_sums(hits: dict[str, dict[str, list]], runs: list[str], where: str,
                value: Callable[[dict[str, list]], list[float]], names: list[str] | None = None) -> tuple[Any, Any]:
    """([R, G] each run's ``value`` summed per concept group, [G] images per group); every run must have
    been scored on the same images. ``names``: the groups' order (default: those of ``where``, sorted), so
    that several sets can share one."""
    import numpy as np

    groups = hits[runs[0]][f"{where}|group"]
    if any(hits[r][f"{where}|group"] != groups for r in runs):
        raise SystemExit(f"{where}: the checkpoints were scored on different images")
    names = names if names is not None else sorted(set(groups))
    g = np.array([names.index(x) for x in groups])  # [N]
    sums = np.stack([np.bincount(g, weights=np.asarray(value(hits[r]), float), minlength=len(names)) for r in runs])
    return sums, np.bincount(g, minlength=len(names))


def concept_bootstrap(hits: dict[str, dict[str, list]], a: str, b: str, where: str = "in-style",
                      rounds: int = 2000, seed: int = 0) -> tuple[float, float, float, float, float]:
    """Mean paired difference a - b in points over checkpoints, with two 95% intervals: resampling the
    checkpoints only, and resampling checkpoints and concept groups together (the concepts a split happens to
    hold are a sample too). Returns (mean, checkpoints low, high, both low, high) as (mean, lo, hi, lo2, hi2)."""
    import numpy as np

    runs = sorted(hits)
    per_group, sizes = _group_sums(hits, runs, where,
                                   lambda h: np.array(h[f"{where}|{a}"]) - np.array(h[f"{where}|{b}"]))  # [R, G]
    rng = np.random.default_rng(seed)
    ckpt, both = [], []
    for _ in range(rounds):
        r = rng.integers(0, len(runs), len(runs))
        ckpt.append(per_group[r].sum() / (len(r) * sizes.sum()))
        c = rng.integers(0, len(sizes), len(sizes))
        both.append(per_group[r][:, c].sum() / (len(r) * sizes[c].sum()))
    (lo, hi), (lo2, hi2) = np.percentile(ckpt, [2.5, 97.5]), np.percentile(both, [2.5, 97.5])
    return 100 * per_group.sum() / (len(runs) * sizes.sum()), 100 * lo, 100 * hi, 100 * lo2, 100 * hi2


def recipe_bootstrap(hits: dict[str, dict[str, list]], a: list[str], b: list[str], variant: str = "single+csls",
                     where: str = "in-style", rounds: int = 2000, seed: int = 0) -> tuple[float, float, float, float, float]:
    """Recipe a's mean minus recipe b's (their seeds' runs), in points, with 95% intervals from resampling
    each recipe's seeds, and the seeds and concept groups together: (mean, lo, hi, lo2, hi2)."""
    import numpy as np

    sums, sizes = _group_sums(hits, a + b, where, lambda h: h[f"{where}|{variant}"])
    ga, gb = sums[:len(a)], sums[len(a):]  # [Ra, G], [Rb, G] hits per concept group
    rng = np.random.default_rng(seed)
    seeds, both = [], []
    for _ in range(rounds):
        ra, rb = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        seeds.append(ga[ra].sum() / (len(a) * sizes.sum()) - gb[rb].sum() / (len(b) * sizes.sum()))
        c = rng.integers(0, len(sizes), len(sizes))
        n = sizes[c].sum()
        both.append(ga[ra][:, c].sum() / (len(a) * n) - gb[rb][:, c].sum() / (len(b) * n))
    mean = ga.sum() / (len(a) * sizes.sum()) - gb.sum() / (len(b) * sizes.sum())
    (lo, hi), (lo2, hi2) = np.percentile(seeds, [2.5, 97.5]), np.percentile(both, [2.5, 97.5])
    return 100 * mean, 100 * lo, 100 * hi, 100 * lo2, 100 * hi2


# trained after the paired rules were decided (for the name-dropout comparison): not among their checkpoints
AFTER_RULES = ("sel-lit-style-rconv-seed3", "sel-lit-style-rconv-seed4")


def eligible(label: str) -> bool:
    """The paired rules' checkpoints: LiT select runs on the untrimmed fit concepts that existed when the
    rules were decided."""
    name = Path(label).name
    return (name.startswith("sel-lit") and "-trim" not in name and "-names" not in name
            and name not in AFTER_RULES)


def choose(results: dict[str, dict[str, dict[str, float]]]) -> tuple[bool, float, float, int]:
    """(adopt?, mean paired difference in points, 95% half-width, checkpoints)."""
    key = "in-style/name/acc1"
    diffs = [100 * (r["templates"][key] - r["single"][key]) for label, r in results.items() if eligible(label)]
    mean, half = interval(diffs)
    return mean - half > 0, mean, half, len(diffs)


def hubness(results: dict[str, dict[str, dict[str, float]]], prompts: str) -> tuple[bool, float, float, int]:
    """(adopt?, mean paired difference in points, 95% half-width, checkpoints): corrected minus uncorrected."""
    key = "in-style/name/acc1"
    diffs = [100 * (r[f"{prompts}+csls"][key] - r[prompts][key]) for label, r in results.items() if eligible(label)]
    mean, half = interval(diffs)
    return mean - half > 0, mean, half, len(diffs)


def with_names(protocol: dict[str, dict[str, float]], names: dict[str, dict[str, dict[str, float]]], variant: str,
               recipes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The protocol scores with in-style name R@1 taken from ``names[...][variant]``; every seed of
    ``recipes`` must have been scored there."""
    from emoji_trim import recipe_seeds

    by_run = {Path(k).name: v[variant]["in-style/name/acc1"] for k, v in names.items() if variant in v}
    labels = {k: k for k in protocol}
    missing = [k for r in recipes for k in recipe_seeds(labels, r) if k not in by_run]
    if missing:
        raise SystemExit(f"no {variant!r} name score for {missing}")
    return {k: {**m, "in-style/name/acc1": by_run.get(k, m["in-style/name/acc1"])} for k, m in protocol.items()}


def compare_names(protocol: dict[str, dict[str, float]], values: dict[str, float], candidate: str,
                  incumbent: str) -> tuple[bool, tuple[float, float], float]:
    """(adopt?, (name R@1 difference, its 95% Welch half-width), rule-value difference) of two recipes."""
    import statistics

    from emoji_trim import recipe_seeds, welch

    names = {k: 100 * m["in-style/name/acc1"] for k, m in protocol.items()}
    diff, half = welch(recipe_seeds(names, candidate), recipe_seeds(names, incumbent))
    rule = statistics.fmean(recipe_seeds(values, candidate)) - statistics.fmean(recipe_seeds(values, incumbent))
    return diff - half > 0 and rule >= 0, (diff, half), rule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    add_score_parser(sub).add_argument("--bank", type=Path, help="a folder with the sets' training shards "
                                       "(BANK): adds the hubness-corrected scores")
    c = sub.add_parser("choose")
    c.add_argument("json", type=Path)
    k = sub.add_parser("compare")
    k.add_argument("protocol", type=Path, help="emoji_protocol.py score JSON (trimmed images)")
    k.add_argument("--prompts", type=Path, required=True, help="emoji_prompts.py score JSON (trimmed images)")
    k.add_argument("candidate")
    k.add_argument("incumbent")
    k.add_argument("--names", type=Path, help="a names score JSON whose --variant gives the in-style name R@1")
    k.add_argument("--variant", default="single+csls")
    q = sub.add_parser("concepts", help="per-image hits of every run (for the concept bootstrap)")
    q.add_argument("runs", nargs="+")
    q.add_argument("--sets", choices=tuple(SETS), required=True)
    q.add_argument("--bank", type=Path, required=True)
    q.add_argument("--json", type=Path, required=True)
    bs = sub.add_parser("bootstrap", help="a paired difference's interval over checkpoints and over concepts")
    bs.add_argument("json", type=Path, nargs="+")
    bs.add_argument("--a", default="single+csls")
    bs.add_argument("--b", default="single")
    bs.add_argument("--recipes", nargs=2, metavar=("CANDIDATE", "INCUMBENT"),
                    help="compare two recipes' seeds under --a instead of two variants paired")
    h = sub.add_parser("hubness")
    h.add_argument("json", type=Path)
    h.add_argument("--prompts", choices=tuple(PROMPTS), required=True, help="the name prompts in force")
    args = p.parse_args(argv)
    if args.cmd == "concepts":
        folder = Path("runs/emoji-protocol/data") if args.sets == "select" else DATA
        for run in args.runs:
            hits: dict[str, list] = {}
            score(run, args.sets, folder, bank=args.bank, hits=hits)
            done = json.loads(args.json.read_text()) if args.json.exists() else {}
            done[Path(run).name] = hits
            args.json.write_text(json.dumps(done))
            print(f"{run}: {len(hits)} lists", file=sys.stderr)
        return 0
    if args.cmd == "bootstrap" and args.recipes:
        from emoji_trim import recipe_seeds

        hits = {k: v for f in args.json for k, v in json.loads(f.read_text()).items()}
        a, b = (recipe_seeds({k: k for k in hits}, r) for r in args.recipes)
        m, lo, hi, lo2, hi2 = recipe_bootstrap(hits, a, b, args.a)
        print(f"{args.recipes[0]} ({len(a)} seeds) - {args.recipes[1]} ({len(b)}), in-style name R@1 ({args.a}): "
              f"{m:+.2f}; 95% bootstrap interval over seeds [{lo:+.2f}, {hi:+.2f}], over seeds and concepts "
              f"[{lo2:+.2f}, {hi2:+.2f}]")
        return 0
    if args.cmd == "bootstrap":
        hits = {k: v for f in args.json for k, v in json.loads(f.read_text()).items()
                if eligible(k) or not k.startswith("sel-")}  # select: the paired rules' checkpoints
        m, lo, hi, lo2, hi2 = concept_bootstrap(hits, args.a, args.b)
        print(f"{args.a} - {args.b}, in-style name R@1 over {len(hits)} checkpoints: {m:+.2f}; 95% bootstrap "
              f"interval over checkpoints [{lo:+.2f}, {hi:+.2f}], over checkpoints and concepts [{lo2:+.2f}, {hi2:+.2f}]")
        return 0
    if args.cmd == "hubness":
        adopt, mean, half, n = hubness(json.loads(args.json.read_text()), args.prompts)
        print(f"{args.prompts}+csls - {args.prompts}, in-style name R@1 over {n} checkpoints: {mean:+.2f} ± "
              f"{half:.2f} (95%)", file=sys.stderr)
        print(f"{args.prompts}+csls" if adopt else args.prompts)
        return 0
    if args.cmd == "compare":
        from emoji_trim import rule_values

        protocol = json.loads(args.protocol.read_text())
        if args.names:  # the name score in force (e.g. hubness-corrected) replaces the protocol's
            protocol = with_names(protocol, json.loads(args.names.read_text()), args.variant,
                                  (args.candidate, args.incumbent))
        values = rule_values(protocol, json.loads(args.prompts.read_text()), "described+subcat")
        adopt, (diff, half), rule = compare_names(protocol, values, args.candidate, args.incumbent)
        print(f"{args.candidate} - {args.incumbent}: name R@1 in-style {diff:+.2f} ± {half:.2f} (95%), "
              f"rule value {rule:+.2f}", file=sys.stderr)
        print(args.candidate if adopt else args.incumbent)
        return 0
    if args.cmd == "choose":
        adopt, mean, half, n = choose(json.loads(args.json.read_text()))
        print(f"templates - single, in-style name R@1 over {n} checkpoints: {mean:+.2f} ± {half:.2f} (95%)",
              file=sys.stderr)
        print("templates" if adopt else "single")
        return 0
    return run_scores(p, args, lambda run, folder: score(run, args.sets, folder, args.activation, args.tokenizer,
                                                         args.bank))


if __name__ == "__main__":
    sys.exit(main())
