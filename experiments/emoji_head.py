"""The text tower locked whole (issue #20): no head between MiniLM and the shared space.

The chosen recipe trains a linear head on the locked MiniLM (384 -> 192). Fitted to 2,062 captions, that head
may bend MiniLM's space where those captions do not reach, which is where the unseen concepts' names and the
category prompts live. ``model.text_proj: none`` with ``model.embed_dim: 384`` drops it: the text side is
MiniLM as pretrained, and the image tower learns to land in its space.

The rule, fixed before any of its runs trained (in ``experiments/protocol/run_all.sh``, step 1h, 0d450ec):
5 seeds of ``sel-lit-style-rconv-nohead`` against the chosen recipe's 5 (``sel-lit-style-rconv``, seeds 0-4),
both trained on the fit concepts and scored on plain select images. The four numbers of the protocol's rule
value: category top-1 with the chosen class prompts (``described+subcat``) in-style, openmoji and fluent-flat,
and in-style name R@1, hubness-corrected against the fit shards (the name score in force). Each recipe's rule
value is the mean of the four, over its seeds. Adopted only if the 95% bootstrap interval of the difference
(candidate minus incumbent), resampling each recipe's seeds and the select concept groups together (2,000
rounds), lies above zero. Then, and only then, its 5 final seeds train on all train concepts and are scored on
val once.

    python experiments/emoji_head.py hits runs/protocol/sel-lit-style-rconv{,-seed1,-seed2,-seed3,-seed4} \
        runs/protocol/sel-lit-style-rconv-nohead{,-seed1,-seed2,-seed3,-seed4} \
        --json runs/protocol/hits-select-head.json
    python experiments/emoji_head.py compare runs/protocol/hits-select-head.json \
        sel-lit-style-rconv-nohead sel-lit-style-rconv --out benchmarks/results_emoji_head.json

(Not adopted: rule value -0.83 in [-3.40, +1.84]; names +0.61, openmoji categories -5.36. Val not touched.)

The next lever under the same rule (run_all.sh step 1i, a6d3e3f, fixed before its runs trained): every
patch seen in training (``model.patch_dropout: 0``, ``sel-lit-style-rconv-fullpatch``), decided only because
1h kept the chosen recipe. (Not adopted: rule value -0.84 in [-2.85, +1.33]; in-style categories +1.99 and
names +0.68, openmoji categories -5.02 in [-8.87, -1.33]. Val not touched.)

Then, decided before its runs trained and used to choose nothing: how much cross-validation over the train
concepts would sharpen such a rule at the same cost. The rule above spends 5 runs per recipe on one fold (the
select concepts, about 290 images per set). Here each recipe spends them on 5 folds, one run each: the select
run (seed 0) and one run on each of folds 1-4 (``emoji_protocol.py split --fold k``,
``experiments/protocol/cv-*-fold{k}.yaml``, seed 0), each scored on the concepts its fold holds out, so every
train concept is scored once, out of fold. For the chosen recipe against every-patch (1i, already decided):
the paired difference over all train concepts, with a bootstrap over concept groups; beside it the same
concept-only bootstrap on the select fold alone (the seed-0 runs), to compare like with like. Run noise is
not in either concept-only interval; the 5-seed spread on select measures it. (Added after the runs, before
anything was decided with it: the t-interval over the five per-fold differences, which counts both.)

    python experiments/emoji_head.py hits runs/protocol/cv-lit-style-rconv{,-fullpatch}-fold1 \
        --folder runs/emoji-protocol/fold1 --json runs/protocol/hits-cv.json     # and so on for folds 2-4
    python experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
        lit-style-rconv-fullpatch lit-style-rconv --out benchmarks/results_emoji_head.json

(Every patch against the chosen recipe: -0.95 ± 0.53 over the folds, against ±2.1 for the rule above.)

The next lever under that cross-validated rule (run_all.sh step 1j, fixed before its runs trained): three
patches in four dropped in training (``model.patch_dropout: 0.75``), one run (seed 0) per fold, paired with
the chosen recipe's run on that fold. Adopted only if the 95% t-interval of the five per-fold rule-value
differences lies above zero.

    python experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
        lit-style-rconv-pd75 lit-style-rconv --out benchmarks/results_emoji_head.json

(Not adopted: -2.01 ± 2.15. Val not touched.)

Then twice the learning rate (``optim.lr: 0.002``, ``lit-style-rconv-lr2``; run_all.sh step 1k, fixed before
its runs trained): the recipe ends at a training loss near 3.5, still falling as the rate reaches zero. Same
cross-validated rule as 1j.

    python experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
        lit-style-rconv-lr2 lit-style-rconv --out benchmarks/results_emoji_head.json

(Not adopted: -1.11 ± 0.86.) Then, by the same rule (steps 1l and 1m, each fixed before its runs trained):
zoom-out added to the recipe (``lit-style-rconv-zoom``; not adopted, +0.52 ± 1.74), and half the learning rate
(``lit-style-rconv-lr05``; not adopted, -0.88 ± 1.73); then zoom-out to side 0.8-1.0 (step 1n,
``lit-style-rconv-zoom08``; not adopted, +0.67 ± 1.74), and the same with every caption keeping the name (step
1o, ``lit-style-rconv-zoom08-names``; not adopted, +0.40 ± 1.23). Then soft targets (step 1p,
``lit-style-rconv-soft17``; not adopted, -3.27 ± 4.08), paired with the chosen recipe's fold runs trained again
on a fresh checkout, recorded as ``lit-style-rconv@2026-12-08``:

    python experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
        lit-style-rconv-soft17 lit-style-rconv --retrained 2026-12-08 --out benchmarks/results_emoji_head.json

Then the sigmoid loss the same way (step 1q, ``lit-style-rconv-siglip``; not adopted, +1.94 ± 2.75). Then a
second look at it (step 1r, rule fixed before its runs trained): a second seed of it and of the chosen recipe on
every fold, each fold's difference averaged over the two seeds. '+' joins a recipe's seed sets; '@TAG' names a
retrained one in place:

    python experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
        lit-style-rconv-siglip+lit-style-rconv-siglip-s1 lit-style-rconv@2026-12-08+lit-style-rconv-s1 \
        --out benchmarks/results_emoji_head.json

(**Adopted: +1.82 ± 1.66**; seed 1 alone +1.71 ± 0.77. Its 5 final seeds were then scored on val once.)
Then every caption keeping the name on the sigmoid-loss recipe (step 1s, two seeds per fold from the start,
``lit-style-rconv-siglip-names+lit-style-rconv-siglip-names-s1`` against
``lit-style-rconv-siglip+lit-style-rconv-siglip-s1``; not adopted, +0.12 ± 1.00; val not touched).
``plot`` draws every decided lever (``experiments/plots/emoji_levers.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emoji_names import _group_sums  # noqa: E402
from emoji_names import score as name_score  # noqa: E402
from emoji_prompts import category_scores, taxonomy  # noqa: E402
from emoji_protocol import SETS  # noqa: E402
from emoji_trim import recipe_seeds  # noqa: E402

STRATEGY = "described+subcat"  # the class prompts in force (emoji_prompts.py choose)
NAMES = "single+csls"  # "an emoji of {}.", hubness-corrected (emoji_names.py hubness)
# the rule value's four numbers: (set, hits key)
METRICS = (("in-style", "category"), ("openmoji", "category"), ("fluent-flat", "category"), ("in-style", NAMES))


def hits(run: str, folder: Path, tax: dict[str, list[str]]) -> dict[str, list]:
    """Per select image, 1 if the top-1 is right: '<set>|category' (Component left out, as the rule's
    category figures do) and '<set>|single+csls' (names), each with its concept groups in '<set>|<key>|group'."""
    import torch

    from torchclip.api import get_tokenizer
    from torchclip.checkpoints import load_model
    from torchclip.train.evaluate import image_embeddings, load_eval_sets

    out: dict[str, list] = {}
    name_hits: dict[str, list] = {}
    name_score(run, "select", folder, bank=folder, hits=name_hits)
    for s in ("in-style", "openmoji", "fluent-flat"):
        out[f"{s}|{NAMES}"] = name_hits[f"{s}|{NAMES}"]
        out[f"{s}|{NAMES}|group"] = name_hits[f"{s}|group"]
    model = load_model(run).eval()
    tok = get_tokenizer(model)
    specs = [f"{n}={'::'.join(str(folder / f'{s}.tar') for s in shards)}" for n, shards in SETS["select"].items()]
    with torch.no_grad():
        for es in load_eval_sets(specs, model.config.vision.image_size):
            img = image_embeddings(model, es.pixels, torch.device("cpu"), 256)  # [N, E]
            keep = [i for i, m in enumerate(es.meta) if m["category"] != "Component"]
            categories = sorted({es.meta[i]["category"] for i in keep})
            labels = torch.tensor([categories.index(es.meta[i]["category"]) for i in keep])
            pred = category_scores(STRATEGY, img[keep], model, tok, categories, tax).argmax(dim=1)
            out[f"{es.name}|category"] = (pred == labels).int().tolist()
            out[f"{es.name}|category|group"] = [es.meta[i]["concept_group"] for i in keep]
    return out


def rule_numbers(run: dict[str, list]) -> list[float]:
    """A run's four rule-value numbers (``METRICS`` order), in points."""
    return [100 * sum(run[f"{s}|{k}"]) / len(run[f"{s}|{k}"]) for s, k in METRICS]


def rule_value(run: dict[str, list]) -> float:
    """The mean of a run's four numbers, in points."""
    numbers = rule_numbers(run)
    return sum(numbers) / len(numbers)


def run_entry(run: dict[str, list]) -> dict[str, float]:
    """A run's four numbers as the results JSON keeps them ('<set> <key>': points)."""
    return {f"{s} {k}": round(v, 2) for (s, k), v in zip(METRICS, rule_numbers(run))}


def fold_run_names(recipe: str) -> list[str]:
    """A recipe's out-of-fold runs: its seed-0 select run (fold 0), then cv-<recipe>-fold1..4. A recipe
    retrained later is named '<recipe>@<tag>', and so are its runs ('sel-<recipe>@<tag>', ...)."""
    base, _, tag = recipe.partition("@")
    at = f"@{tag}" if tag else ""
    return [f"sel-{base}{at}"] + [f"cv-{base}-fold{k}{at}" for k in range(1, 5)]


def _per_group(runs: list[dict[str, list]], key: str, groups: list[str]) -> tuple[Any, Any]:
    """([R, G] hits per concept group, [G] images per group) of one metric, groups in ``groups``' order."""
    by = {str(i): r for i, r in enumerate(runs)}
    return _group_sums(by, list(by), key, lambda h: h[key], groups)


def compare(results: dict[str, dict[str, list]], candidate: str, incumbent: str, rounds: int = 2000,
            seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{metric or 'rule': (candidate minus incumbent in points, 95% low, high)}, resampling each recipe's
    seeds and the concept groups (shared by all four metrics: a group's images in every style) together."""
    import numpy as np

    labels = {Path(k).name: k for k in results}
    a = [results[k] for k in recipe_seeds(labels, candidate)]  # labels: run name -> its key
    b = [results[k] for k in recipe_seeds(labels, incumbent)]
    if len(a) < 2 or len(b) < 2:
        raise SystemExit(f"need 2+ seeds of each recipe: {len(a)} of {candidate}, {len(b)} of {incumbent}")
    groups = sorted({g for r in a + b for s, k in METRICS for g in r[f"{s}|{k}|group"]})
    parts = [_per_group(a + b, f"{s}|{k}", groups) for s, k in METRICS]  # per metric: [Ra + Rb, G], [G]
    rng = np.random.default_rng(seed)

    def diffs(ra: Any, rb: Any, c: Any) -> list[float]:
        out = []
        for sums, sizes in parts:
            n = sizes[c].sum()
            out.append(sums[: len(a)][ra][:, c].sum() / (len(ra) * n) - sums[len(a):][rb][:, c].sum() / (len(rb) * n))
        return out + [float(np.mean(out))]

    every = np.arange(len(groups))
    point = diffs(np.arange(len(a)), np.arange(len(b)), every)
    boot = np.array([diffs(rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b)),
                           rng.integers(0, len(groups), len(groups))) for _ in range(rounds)])  # [rounds, 5]
    names = [f"{s} {k}" for s, k in METRICS] + ["rule"]
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {n: (100 * p, 100 * low, 100 * high) for n, p, low, high in zip(names, point, lo, hi)}


def concept_interval(a: list[dict[str, list]], b: list[dict[str, list]], rounds: int = 2000,
                     seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{metric or 'rule': (a minus b in points, 95% low, high)} for two lists of runs that scored the same
    images (a[i] and b[i] on the same fold), resampling concept groups only."""
    import numpy as np

    def merged(runs: list[dict[str, list]]) -> dict[str, list]:
        out: dict[str, list] = {}
        for r in runs:  # folds hold disjoint concepts: their images just line up one after another
            for k, v in r.items():
                out.setdefault(k, []).extend(v)
        return out

    ma, mb = merged(a), merged(b)
    groups = sorted({g for s, k in METRICS for g in ma[f"{s}|{k}|group"]})
    parts = [_per_group([ma, mb], f"{s}|{k}", groups) for s, k in METRICS]  # per metric: [2, G], [G]
    rng = np.random.default_rng(seed)

    def diffs(c: Any) -> list[float]:
        out = [(sums[0, c].sum() - sums[1, c].sum()) / sizes[c].sum() for sums, sizes in parts]
        return out + [float(np.mean(out))]

    point = diffs(np.arange(len(groups)))
    boot = np.array([diffs(rng.integers(0, len(groups), len(groups))) for _ in range(rounds)])  # [rounds, 5]
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    names = [f"{s} {k}" for s, k in METRICS] + ["rule"]
    return {n: (100 * p, 100 * low, 100 * high) for n, p, low, high in zip(names, point, lo, hi)}


def cv_runs(select: dict[str, dict[str, list]], folds: dict[str, dict[str, list]], recipe: str) -> list[dict[str, list]]:
    """A recipe's out-of-fold runs' hits, in ``fold_run_names`` order. A '<recipe>@<tag>' is looked up by its
    runs' folder names (a retrained run's hits are keyed by its folder, as any run's)."""
    by = {Path(k).name: v for k, v in {**select, **folds}.items()}
    names = [n.partition("@")[0] for n in fold_run_names(recipe)]
    missing = [n for n in names if n not in by]
    if missing:
        raise SystemExit(f"no hits for {missing}")
    return [by[n] for n in names]


def seed_mean(runs: list[dict[str, list]]) -> dict[str, list]:
    """One fold's runs of one recipe (its seeds) as one run: each image's hit averaged over the seeds."""
    out: dict[str, list] = {}
    for k in runs[0]:
        if k.endswith("|group"):
            if any(r[k] != runs[0][k] for r in runs):
                raise SystemExit(f"{k}: the seeds were scored on different images")
            out[k] = runs[0][k]
        else:
            out[k] = [sum(v) / len(runs) for v in zip(*(r[k] for r in runs))]
    return out


def seed_spread(a: list[list[dict[str, list]]], b: list[list[dict[str, list]]]) -> dict[str, float]:
    """How much of the per-fold rule-value difference's spread is the runs' and how much the concepts', from two
    seeds per fold: d[f, s] = a - b on fold f with seed s = mu + c[f] + e[f, s]. Var(d[f, 0] - d[f, 1]) = 2 var(e)
    and Var over folds of d[f, s] = var(c) + var(e). In rule points (standard deviations)."""
    import numpy as np

    d = np.array([[rule_value(x) - rule_value(y) for x, y in zip(xs, ys)] for xs, ys in zip(a, b)])  # [F, 2]
    run_var = float(np.mean((d[:, 0] - d[:, 1]) ** 2) / 2)
    fold_var = float(np.var(d, axis=0, ddof=1).mean())
    return {"run sd of one paired difference": run_var ** 0.5,
            "fold sd of one paired difference": fold_var ** 0.5,
            "concept sd (fold less run)": max(fold_var - run_var, 0.0) ** 0.5,
            "seed-averaged fold sd": float(np.std(d.mean(axis=1), ddof=1))}


def fold_interval(a: list[dict[str, list]], b: list[dict[str, list]]) -> dict[str, tuple[float, float, list[float]]]:
    """{metric or 'rule': (mean of the per-fold differences a - b in points, 95% t half-width, per fold)}:
    each fold is an independent replicate (its own concepts and its own pair of runs), so this interval counts
    run noise and concept noise alike."""
    from emoji_protocol import interval

    per_fold = []
    for x, y in zip(a, b):
        va, vb = rule_numbers(x), rule_numbers(y)
        per_fold.append([p - q for p, q in zip(va, vb)] + [rule_value(x) - rule_value(y)])
    names = [f"{s} {k}" for s, k in METRICS] + ["rule"]
    out = {}
    for j, n in enumerate(names):
        col = [f[j] for f in per_fold]
        out[n] = (*interval(col), col)
    return out


def fold_table(runs: dict[str, dict[str, float]], recipes: list[str]) -> str:
    """Markdown rows: per recipe, the mean over its 5 out-of-fold runs of each rule number and of the rule value."""
    cols = [f"{s} {k}" for s, k in METRICS]
    lines = ["| recipe | " + " | ".join(cols) + " | rule value |", "|---" + "|---:" * (len(cols) + 1) + "|"]
    for r in recipes:
        per_run = [runs[n] for n in fold_run_names(r)]
        means = [sum(x[c] for x in per_run) / len(per_run) for c in cols]
        lines.append(f"| {r} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {sum(means) / len(means):.2f} |")
    return "\n".join(lines)


LEVER_NAMES = {"fullpatch": "every patch seen", "pd75": "patch dropout 0.75", "lr2": "learning rate 0.002",
               "zoom": "zoom-out, side 0.6-1.0", "lr05": "learning rate 0.0005", "zoom08": "zoom-out, side 0.8-1.0",
               "zoom08-names": "zoom-out 0.8-1.0, names kept", "soft17": "soft targets 0.17",
               "siglip": "sigmoid loss", "siglip+siglip-s1": "sigmoid loss, seeds 0 and 1",
               "siglip-names+siglip-names-s1": "names kept, vs the sigmoid loss"}


def plot_levers(doc: dict[str, Any], path: Path) -> Path:
    """A forest plot of every lever the cross-validated rule decided: per lever, the mean per-fold difference
    from the chosen recipe and its 95% t-interval, for the rule value and each of its four numbers."""
    from torchclip.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    entries = [(k.split(" vs ")[0], v["t over folds"]) for k, v in doc["cross-validation"].items()]
    labels = []
    for cand, _ in entries:
        short = "+".join(r.removeprefix("lit-style-rconv-") for r in cand.split("+"))
        labels.append(LEVER_NAMES.get(short, short))
    cols = ["rule"] + [f"{s} {k}" for s, k in METRICS]
    titles = ["rule value", "category in-style", "category openmoji", "category fluent-flat", "name R@1 in-style"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.1 * len(cols), 0.42 * len(entries) + 1.4), sharey=True)
    y = list(range(len(entries)))[::-1]  # the first decided on top
    for ax, col, title in zip(axes, cols, titles):
        m = [e[col]["difference"] for _, e in entries]
        h = [e[col]["half_width"] for _, e in entries]
        color = ["tab:green" if a - b > 0 else "tab:red" if a + b < 0 else "tab:blue" for a, b in zip(m, h)]
        ax.errorbar(m, y, xerr=h, fmt="none", ecolor="0.6", capsize=3)
        ax.scatter(m, y, c=color, zorder=3)  # green: interval above zero, red: below
        ax.axvline(0, color="0.2", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("points vs the recipe in force")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    fig.suptitle("Levers on the emoji LiT recipe: mean per-fold difference, 95% t-interval over 5 folds "
                 "(train concepts only)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hits", help="per-image hits of the rule's four numbers on plain select images")
    h.add_argument("runs", nargs="+")
    h.add_argument("--folder", type=Path, default=Path("runs/emoji-protocol/data"))
    h.add_argument("--json", type=Path, required=True)
    c = sub.add_parser("compare", help="the rule: prints the recipe it keeps")
    c.add_argument("json", type=Path)
    c.add_argument("candidate")
    c.add_argument("incumbent")
    c.add_argument("--out", type=Path, help="add both recipes' per-seed numbers and the comparison to this JSON")
    v = sub.add_parser("cv", help="out-of-fold difference over all train concepts (5 folds, one run each); "
                       "prints the recipe the cross-validated rule keeps")
    v.add_argument("select", type=Path, help="hits of the select runs (fold 0)")
    v.add_argument("folds", type=Path, help="hits of the fold 1-4 runs")
    v.add_argument("candidate", help="a recipe, or several seeds of one joined by '+' (each fold's runs averaged)")
    v.add_argument("incumbent", help="the same, with as many seeds")
    v.add_argument("--out", type=Path)
    v.add_argument("--retrained", metavar="TAG", help="the incumbent's runs were trained again (a fresh checkout): "
                   "--out records them as '<run>@TAG' beside the earlier numbers")
    t = sub.add_parser("folds", help="a markdown table: each recipe's four numbers and rule value, mean over its "
                       "5 fold runs (from a results JSON that cv --out wrote)")
    t.add_argument("json", type=Path)
    t.add_argument("recipes", nargs="+")
    g = sub.add_parser("plot", help="a forest plot of every decided lever (from a results JSON that cv --out wrote)")
    g.add_argument("json", type=Path)
    g.add_argument("--out", type=Path, default=Path("experiments/plots/emoji_levers.png"))
    args = p.parse_args(argv)
    if args.cmd == "plot":
        print(f"wrote {plot_levers(json.loads(args.json.read_text()), args.out)}")
        return 0
    if args.cmd == "folds":
        print(fold_table(json.loads(args.json.read_text())["runs"], args.recipes))
        return 0
    if args.cmd == "cv":
        select, folds = json.loads(args.select.read_text()), json.loads(args.folds.read_text())
        # 'r1+r2': one recipe's seeds, each a full set of fold runs; each fold's runs are averaged over seeds
        if args.retrained and "+" in args.incumbent:
            raise SystemExit("with seeds joined by '+', tag a retrained recipe in place: <recipe>@TAG")
        seeds_a = [cv_runs(select, folds, r) for r in args.candidate.split("+")]
        seeds_b = [cv_runs(select, folds, r) for r in args.incumbent.split("+")]
        if len(seeds_a) != len(seeds_b):
            raise SystemExit("the candidate and the incumbent need as many seeds each")
        a, b = [seed_mean(list(f)) for f in zip(*seeds_a)], [seed_mean(list(f)) for f in zip(*seeds_b)]
        per_seed = {}
        if len(seeds_a) > 1:
            for i, (sa, sb) in enumerate(zip(seeds_a, seeds_b)):
                m, h, col = fold_interval(sa, sb)["rule"]
                per_seed[f"seed set {i}"] = {"difference": round(m, 2), "half_width": round(h, 2),
                                             "per_fold": [round(x, 2) for x in col]}
                print(f"t over folds, seed set {i} alone, rule: {m:+.2f} ± {h:.2f}", file=sys.stderr)
            if len(seeds_a) == 2:
                per_seed["spread"] = {k: round(v, 2) for k, v in seed_spread(list(zip(*seeds_a)),
                                                                             list(zip(*seeds_b))).items()}
                print(f"spread: {per_seed['spread']}", file=sys.stderr)
        both = {"all folds": concept_interval(a, b), "select fold only": concept_interval(a[:1], b[:1])}
        for where, out in both.items():
            for name, (d, lo, hi) in out.items():
                print(f"concept bootstrap, {where}, {name}: {d:+.2f} [{lo:+.2f}, {hi:+.2f}]", file=sys.stderr)
        folds = fold_interval(a, b)
        for name, (m, h, col) in folds.items():
            print(f"t over folds, {name}: {m:+.2f} ± {h:.2f} (per fold {', '.join(f'{x:+.2f}' for x in col)})",
                  file=sys.stderr)
        kept = args.candidate if folds["rule"][0] - folds["rule"][1] > 0 else args.incumbent
        print(kept)  # the cross-validated rule (1j): the t-interval over the folds above zero
        if args.out:
            doc = json.loads(args.out.read_text())
            entry = {f"concept bootstrap, {where}": {n: {"difference": round(d, 2), "low": round(lo, 2),
                                                         "high": round(hi, 2)} for n, (d, lo, hi) in out.items()}
                     for where, out in both.items()}
            entry["t over folds"] = {n: {"difference": round(m, 2), "half_width": round(h, 2),
                                         "per_fold": [round(x, 2) for x in col]} for n, (m, h, col) in folds.items()}
            if per_seed:
                entry["each seed set alone, t over folds (rule)"] = per_seed
            entry["kept by the cross-validated rule"] = kept
            incumbent = f"{args.incumbent}@{args.retrained}" if args.retrained else args.incumbent
            doc.setdefault("cross-validation", {})[f"{args.candidate} vs {incumbent}"] = entry
            pairs = [*zip(args.candidate.split("+"), seeds_a), *zip(incumbent.split("+"), seeds_b)]
            for recipe, runs in pairs:  # each run's four numbers
                for run, h in zip(fold_run_names(recipe), runs):
                    if doc["runs"].get(run, run_entry(h)) != run_entry(h):  # never overwrite what a decision read
                        raise SystemExit(f"{args.out}: {run} is recorded with other numbers; a run trained again "
                                         "is recorded with --retrained TAG")
                    doc["runs"][run] = run_entry(h)
            args.out.write_text(json.dumps(doc, indent=1) + "\n")
        return 0
    if args.cmd == "hits":
        tax = taxonomy()
        results = json.loads(args.json.read_text()) if args.json.exists() else {}
        for run in args.runs:
            results[run] = hits(run, args.folder, tax)
            print(run, {k: round(100 * sum(v) / len(v), 1) for k, v in results[run].items() if "|group" not in k})
            args.json.write_text(json.dumps(results))
        return 0
    results = json.loads(args.json.read_text())
    out = compare(results, args.candidate, args.incumbent)
    for name, (d, lo, hi) in out.items():
        print(f"{name}: {d:+.2f} [{lo:+.2f}, {hi:+.2f}]", file=sys.stderr)
    kept = args.candidate if out["rule"][1] > 0 else args.incumbent
    print(kept)
    if args.out:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}, "comparisons": {}}
        for run, h in results.items():
            doc["runs"][Path(run).name] = run_entry(h)
        doc["comparisons"][f"{args.candidate} vs {args.incumbent}"] = {
            "kept": kept, **{n: {"difference": round(d, 2), "low": round(lo, 2), "high": round(hi, 2)}
                             for n, (d, lo, hi) in out.items()}}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
