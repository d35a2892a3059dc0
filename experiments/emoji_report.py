"""The paper's findings at small scale, on the emoji benchmark (``../shared/data/emoji``, protocol in its
README): prompting, zero-shot vs k-shot probes, drawing-style shift, unseen concepts.

An experiment, not a library feature: it lives outside the package and uses only torchclip's public
modules. Everything here takes a trained model and its tokenizer; ``emoji_findings.py`` trains and calls it. The four questions:

(a) bare label vs one template vs a template ensemble: zero-shot accuracy of each;
(b) zero-shot vs k-shot linear probes on the same features: the k at which the probe catches up;
(c) drawing-style shift: in-style vs new-style accuracy of zero-shot and of an in-style linear probe
    (the paper's effective-robustness plot, Fig. 13, in miniature);
(d) category / subcategory zero-shot and name retrieval on concepts never seen in training.

Protocol: train styles google + twitter; evaluation on the ``val`` concepts (never in training, any style),
in-style = google + twitter, new-style = openmoji + fluent-flat. Category excludes ``Component``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchclip.evaluation.datasets import ImageDataset, load_webdataset
from torchclip.evaluation.features import TextTokenizer, extract_image_features
from torchclip.evaluation.metrics import classification_metrics, confusion_matrix, retrieval_recall
from torchclip.evaluation.probe import few_shot_probe, linear_probe
from torchclip.evaluation.retrieval import caption_gallery, rank_summary, retrieval_scores
from torchclip.evaluation.templates import prompt_name
from torchclip.evaluation.zeroshot import build_classifier, build_prompt_classifier, zeroshot_logits
from torchclip.model import CLIP

__all__ = ["IN_STYLES", "NEW_STYLES", "TEMPLATE_VARIANTS", "EmojiSplits", "load_emoji", "run_findings",
           "baseline_probe", "checkpoint_trajectory", "make_plots", "render_markdown"]

IN_STYLES = ("google", "twitter")
NEW_STYLES = ("openmoji", "fluent-flat")
EXCLUDED_CATEGORY = "Component"
MEMBER_NAMES = "training-concept names (text only)"
EDITED_NAMES = "bare label, edited names"
CLASS_PROMPTS = "description + subcategory names (class prompts)"  # experiments/emoji_category_prompts.json
# (a): label display name -> template set; the ensemble sets are defined in templates.py
TEMPLATE_VARIANTS: dict[str, str | tuple[str, ...]] = {
    "bare label": "bare",
    "'a photo of a {}.'": "photo",
    "'an emoji of {}.'": ("an emoji of {}.",),
    "ensemble (18, photo-style)": "ensemble",
    "ensemble (12, emoji-style)": "emoji",
}


@dataclass
class EmojiSplits:
    """The images of each (styles, split) as ImageDatasets with category labels and name captions."""

    root: Path
    categories: list[str]
    subcategories: list[str]
    parts: dict[tuple[str, str], ImageDataset]  # (style, split) -> dataset

    def get(self, styles: Sequence[str], split: str) -> ImageDataset:
        parts = [self.parts[(s, split)] for s in styles]
        return ImageDataset.concat(parts, name=f"{'+'.join(styles)}-{split}")


def load_emoji(root: str | os.PathLike[str], styles: Sequence[str] = IN_STYLES + NEW_STYLES,
               splits: Sequence[str] = ("train", "val")) -> EmojiSplits:
    """Shards as datasets labelled by category (without ``Component``), captioned by the emoji name."""
    root = Path(root)
    classes = json.loads((root / "classes.json").read_text())
    categories = [c for c in classes["categories"] if c != EXCLUDED_CATEGORY]
    parts = {}
    component_subs: set[str] = set()
    for style in styles:
        for split in splits:
            raw = load_webdataset(root / f"{style}-{split}.tar", caption_key="json:name")
            component_subs |= {m["subcategory"] for m in raw.meta if m["category"] == EXCLUDED_CATEGORY}
            ds = raw.relabel("category", classes["categories"], exclude=[EXCLUDED_CATEGORY])
            ds.name = f"{style}-{split}"
            parts[(style, split)] = ds
    subcategories = [s for s in classes["subcategories"] if s not in component_subs]
    return EmojiSplits(root, categories, subcategories, parts)


def _subcategory_labels(ds: ImageDataset, subcategories: Sequence[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(subcategories)}
    return np.array([index[m["subcategory"]] for m in ds.meta], dtype=np.int64)


def _member_names(train: ImageDataset, field: str, classes: Sequence[str]) -> list[Any]:
    """For each class, the distinct names of the training concepts in it (a class without any falls
    back to its own readable name)."""
    members: dict[str, set[str]] = {c: set() for c in classes}
    for m in train.meta:
        if m.get(field) in members:
            members[m[field]].add(m["name"])
    return [sorted(members[c]) or c.lower() for c in classes]


def _category_names(categories: Sequence[str], synonyms: bool) -> list[Any]:
    """Prompt names as the labels are written (``animals & nature``: the tokenizer lower-cases anyway);
    with ``synonyms`` also each part (``animals``, ``nature``), averaged into the class vector like
    OpenAI's FER2013 synonym lists."""
    out: list[Any] = []
    for c in categories:
        parts = [p.strip().lower() for p in c.split("&")] if "&" in c else []
        out.append([c.lower(), *parts] if synonyms and parts else c.lower())
    return out


def _zs(feats: torch.Tensor, weights: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    return classification_metrics(zeroshot_logits(feats, weights), labels)


def _retrieval(feats: torch.Tensor, ds: ImageDataset, text_feats: dict[str, torch.Tensor]) -> dict[str, float]:
    texts, pos = caption_gallery(ds.captions)
    sim = retrieval_scores(feats, torch.stack([text_feats[t] for t in texts]))
    return {**retrieval_recall(sim, pos, (1, 5, 10)), **rank_summary(sim, pos)}


def run_findings(model: CLIP, tokenizer: TextTokenizer, data_root: str | os.PathLike[str], *,
                 ks: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                 cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                 probe_C: float | None = None,
                 class_prompts: dict[str, Any] | None = None) -> dict[str, Any]:
    """All numbers of (a)-(d) as one JSON-able dict (fractions in [0, 1]). ``probe_C`` fixes the probes'
    regularization instead of searching it (fast smoke runs). ``class_prompts`` (category -> its prompts,
    as in ``torchclip eval zeroshot --class-prompts``) adds that classifier to (a)-(c)."""
    from torchclip.evaluation.features import encode_texts

    start = time.time()

    def log(msg: str) -> None:
        if progress:
            print(f"[findings {time.time() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    data = load_emoji(data_root)
    log("image features")
    ev: dict[str, ImageDataset] = {
        "in-style": data.get(IN_STYLES, "val"), "new-style": data.get(NEW_STYLES, "val"),
        **{s: data.get((s,), "val") for s in IN_STYLES + NEW_STYLES}}
    train = data.get(IN_STYLES, "train")
    kw = dict(cache_dir=cache_dir, progress=progress)
    # per style once; the two combined splits are concatenations in the same order as ``data.get``
    emb = {s: extract_image_features(model, ev[s], **kw) for s in IN_STYLES + NEW_STYLES}
    pre = {s: extract_image_features(model, ev[s], kind="pre_projection", **kw) for s in IN_STYLES + NEW_STYLES}
    for feats in (emb, pre):
        feats["in-style"] = torch.cat([feats[s] for s in IN_STYLES])
        feats["new-style"] = torch.cat([feats[s] for s in NEW_STYLES])
    train_pre = extract_image_features(model, train, kind="pre_projection", **kw)
    sub_labels = {k: _subcategory_labels(d, data.subcategories) for k, d in ev.items()}
    out: dict[str, Any] = {"n_images": {k: len(d) for k, d in ev.items()}, "n_train": len(train),
                           "categories": data.categories, "n_subcategories": len(data.subcategories)}

    log("(a) prompting: zero-shot classifiers")
    # (a) prompting
    cat_names, sub_names = _category_names(data.categories, False), list(data.subcategories)
    prompting: dict[str, dict[str, Any]] = {}
    variants = dict(TEMPLATE_VARIANTS)
    for label, spec in variants.items():
        wc = build_classifier(model, tokenizer, cat_names, spec, cache_dir=cache_dir)
        ws = build_classifier(model, tokenizer, sub_names, spec, cache_dir=cache_dir)
        prompting[label] = {k: {"category": _zs(emb[k], wc, ev[k].labels),
                                "subcategory": _zs(emb[k], ws, sub_labels[k])} for k in ev}
    syn = build_classifier(model, tokenizer, _category_names(data.categories, True), "emoji", cache_dir=cache_dir)
    prompting["ensemble (emoji) + name parts"] = {k: {"category": _zs(emb[k], syn, ev[k].labels)} for k in ev}
    # the paper hand-edited ImageNet's names (+1.5%); the mechanical edit here: '&' -> 'and', '-' -> ' '
    we_c = build_classifier(model, tokenizer, [prompt_name(c) for c in data.categories], "bare", cache_dir=cache_dir)
    we_s = build_classifier(model, tokenizer, [prompt_name(c) for c in data.subcategories], "bare",
                            cache_dir=cache_dir)
    prompting[EDITED_NAMES] = {k: {"category": _zs(emb[k], we_c, ev[k].labels),
                                   "subcategory": _zs(emb[k], we_s, sub_labels[k])} for k in ev}
    # A class described by the names of its *training* concepts (text only: no image label is used), the
    # paper's class-name engineering taken further; category names themselves never occur in captions.
    wm_c = build_classifier(model, tokenizer, _member_names(train, "category", data.categories), "bare",
                            cache_dir=cache_dir)
    wm_s = build_classifier(model, tokenizer, _member_names(train, "subcategory", data.subcategories), "bare",
                            cache_dir=cache_dir)
    prompting[MEMBER_NAMES] = {k: {"category": _zs(emb[k], wm_c, ev[k].labels),
                                   "subcategory": _zs(emb[k], wm_s, sub_labels[k])} for k in ev}
    # label-side text only (experiments/emoji_category_prompts.json: a line per category and its Unicode
    # subcategories' names, chosen on held-out train concepts by experiments/emoji_prompts.py); category only
    if class_prompts is not None:
        wp = build_prompt_classifier(model, tokenizer, [class_prompts[c] for c in data.categories],
                                     cache_dir=cache_dir)
        prompting[CLASS_PROMPTS] = {k: {"category": _zs(emb[k], wp, ev[k].labels)} for k in ev}
    out["prompting"] = prompting
    best = max(TEMPLATE_VARIANTS, key=lambda v: prompting[v]["in-style"]["category"]["acc1"])
    out["best_template"] = best
    wb = build_classifier(model, tokenizer, cat_names, variants[best], cache_dir=cache_dir)
    out["confusion"] = {k: confusion_matrix(zeroshot_logits(emb[k], wb).argmax(1), ev[k].labels,
                                            len(data.categories)).tolist() for k in ("in-style", "new-style")}

    log("(b) k-shot probes")
    # (b) zero-shot vs k-shot probes (shots from the training concepts, same features as the full probe)
    groups = [m.get("concept_group") for m in train.meta]
    fewshot: dict[str, Any] = {}
    for task, y_train, y_test, n_cls, task_seeds in (
            ("category", train.labels, ev["in-style"].labels, len(data.categories), seeds),
            ("subcategory", _subcategory_labels(train, data.subcategories), sub_labels["in-style"],
             len(data.subcategories), seeds[:3])):
        extra = {"new-style": (pre["new-style"], ev["new-style"].labels)} if task == "category" else None
        res = few_shot_probe(train_pre, y_train, pre["in-style"], y_test, ks=ks, seeds=task_seeds,
                             groups=groups, num_classes=n_cls, C=probe_C, extra_tests=extra)
        fewshot[task] = {"summary": {str(k): v for k, v in res.summary().items()}, "seeds": list(task_seeds),
                         "C": {str(k): v for k, v in res.Cs.items()},
                         "new_style": {str(k): v for k, v in res.summary(test="new-style").items()} if extra else {}}
        for label in ("bare label", best, MEMBER_NAMES, CLASS_PROMPTS):
            if label not in prompting or task not in prompting[label]["in-style"]:
                continue
            target = prompting[label]["in-style"][task]["acc1"]
            fewshot[task].setdefault("catch_up", {})[label] = res.matches(target)
    out["fewshot"] = fewshot

    log("(c) linear probe")
    # (c) style shift: zero-shot vs a full linear probe trained in-style
    others = {k: (pre[k], ev[k].labels) for k in ev if k != "in-style"}
    probe = linear_probe(train_pre, train.labels, pre["in-style"], ev["in-style"].labels, groups=groups,
                         num_classes=len(data.categories), C=probe_C, extra_tests=others)
    out["probe"] = {"C": probe.C, "in-style": probe.metrics, "new-style": probe.extra["new-style"],
                    "per_style": {s: probe.extra[s] for s in IN_STYLES + NEW_STYLES}}

    log("(d) name retrieval")
    # (d) unseen concepts: names as the text gallery, both retrieval directions
    all_names = sorted({c for d in ev.values() for caps in d.captions for c in caps})
    name_feats = dict(zip(all_names, encode_texts(model, tokenizer, all_names)))
    out["retrieval"] = {k: _retrieval(emb[k], ev[k], name_feats) for k in ev}
    out["n_names"] = {k: len(caption_gallery(d.captions)[0]) for k, d in ev.items()}
    out["chance"] = {"category_acc1": 1 / len(data.categories),
                     "subcategory_acc1": 1 / len(data.subcategories),
                     "subcategory_acc5": 5 / len(data.subcategories)}
    for k, d in ev.items():
        pos = caption_gallery(d.captions)[1]
        for r in (1, 5, 10):
            out["chance"][f"text_R@{r}_{k}"] = _chance_recall(pos, r)
            out["chance"][f"image_R@{r}_{k}"] = _chance_recall(pos.t(), r)
        gen = torch.Generator().manual_seed(0)  # median ranks of random scores, averaged over draws
        draws = [rank_summary(torch.rand(pos.shape, generator=gen), pos) for _ in range(5)]
        for key in ("text_retrieval_median_rank", "image_retrieval_median_rank"):
            out["chance"][f"{key}_{k}"] = float(np.mean([d[key] for d in draws]))
    return out


def checkpoint_trajectory(checkpoints: Sequence[str | os.PathLike[str]], tokenizer: TextTokenizer,
                          data_root: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
                          progress: bool = True) -> list[dict[str, Any]]:
    """Zero-shot (every template variant) and in-style linear-probe category accuracy, in-style and
    new-style, for each checkpoint of a run: one model per point on the robustness plot, as the paper's
    Fig. 13 plots many models rather than one."""
    from torchclip import load

    data = load_emoji(data_root)
    train = data.get(IN_STYLES, "train")
    ins, new = data.get(IN_STYLES, "val"), data.get(NEW_STYLES, "val")
    groups = [m.get("concept_group") for m in train.meta]
    names = _category_names(data.categories, False)
    out = []
    for path in checkpoints:
        model, _ = load(path)
        kw = dict(cache_dir=cache_dir, progress=progress)
        emb = {k: extract_image_features(model, d, **kw) for k, d in (("in-style", ins), ("new-style", new))}
        zs = {}
        specs = [(names, spec, label) for label, spec in TEMPLATE_VARIANTS.items()]
        specs.append((_member_names(train, "category", data.categories), "bare", MEMBER_NAMES))
        for classnames, spec, label in specs:
            w = build_classifier(model, tokenizer, classnames, spec, cache_dir=cache_dir)
            zs[label] = {k: _zs(emb[k], w, d.labels)["acc1"] for k, d in (("in-style", ins), ("new-style", new))}
        pre = {k: extract_image_features(model, d, kind="pre_projection", **kw)
               for k, d in (("train", train), ("in-style", ins), ("new-style", new))}
        p = linear_probe(pre["train"], train.labels, pre["in-style"], ins.labels, groups=groups,
                         num_classes=len(data.categories), extra_tests={"new-style": (pre["new-style"], new.labels)})
        step = Path(path).stem.split("-")[-1]
        out.append({"checkpoint": str(path), "step": int(step) if step.isdigit() else None, "zero_shot": zs,
                    "probe": {"in-style": p.metrics["acc1"], "new-style": p.extra["new-style"]["acc1"], "C": p.C}})
    return out


def baseline_probe(model: CLIP, data_root: str | os.PathLike[str], *,
                   cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """The in-style linear probe on an *untrained* model's features: how much of (b)-(c) the architecture
    and pixels give without any contrastive training (random features are a strong probe baseline)."""
    data = load_emoji(data_root, splits=("train", "val"))
    train = data.get(IN_STYLES, "train")
    kw = dict(kind="pre_projection", cache_dir=cache_dir, progress=progress)
    tx = extract_image_features(model, train, **kw)
    groups = [m.get("concept_group") for m in train.meta]
    n = len(data.categories)
    ins, new = data.get(IN_STYLES, "val"), data.get(NEW_STYLES, "val")
    p = linear_probe(tx, train.labels, extract_image_features(model, ins, **kw), ins.labels, groups=groups,
                     num_classes=n, extra_tests={"new-style": (extract_image_features(model, new, **kw), new.labels)})
    return {"probe": {"C": p.C, "in-style": p.metrics, "new-style": p.extra["new-style"]}}


def _chance_recall(positives: torch.Tensor, k: int) -> float:
    """Expected recall@k of a random ranking: per query with p positives among n candidates,
    1 - C(n - p, k) / C(n, k); averaged over queries (rows)."""
    n = positives.shape[1]
    vals = []
    for p in positives.sum(dim=1).tolist():
        miss = 1.0
        for i in range(min(k, n)):
            miss *= max(n - p - i, 0) / (n - i)
        vals.append(1.0 - miss)
    return float(np.mean(vals))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def probe_trend(res: dict[str, Any]) -> tuple[float, float] | None:
    """(slope, intercept) of new-style vs in-style accuracy over every linear probe in ``res`` (k-shot,
    full, per checkpoint), fitted in logit space as the effective-robustness literature does; None with
    fewer than two distinct points."""
    pts = [(v[0], res["fewshot"]["category"]["new_style"][k][0])
           for k, v in res["fewshot"]["category"]["summary"].items() if k in res["fewshot"]["category"]["new_style"]]
    pts.append((res["probe"]["in-style"]["acc1"], res["probe"]["new-style"]["acc1"]))
    pts += [(t["probe"]["in-style"], t["probe"]["new-style"]) for t in res.get("trajectory") or []]
    xs = np.array([_logit(x) for x, _ in pts])
    ys = np.array([_logit(y) for _, y in pts])
    if len(pts) < 2 or np.ptp(xs) < 1e-9:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)


def trend_predict(trend: tuple[float, float], in_acc: float) -> float:
    """The new-style accuracy the fitted trend predicts at ``in_acc``."""
    return 1 / (1 + math.exp(-(trend[0] * _logit(in_acc) + trend[1])))


def effective_robustness(trend: tuple[float, float] | None, in_acc: float, new_acc: float) -> float | None:
    """New-style accuracy above what the probes' trend predicts at the same in-style accuracy."""
    return None if trend is None else new_acc - trend_predict(trend, in_acc)


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


# ---- the markdown section and its plots -------------------------------------------------------------------


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _ms(v: Sequence[float]) -> str:
    return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}"


def make_plots(res: dict[str, Any], plot_dir: str | os.PathLike[str], prefix: str = "eval_") -> dict[str, Path]:
    """The report's figures as PNG files; returns name -> path."""
    from torchclip.evaluation.plots import plot_bars, plot_confusion, plot_few_shot, plot_robustness

    d = Path(plot_dir)
    pr = res["prompting"]
    variants = [v for v in [*TEMPLATE_VARIANTS, EDITED_NAMES, MEMBER_NAMES, CLASS_PROMPTS] if v in pr]
    out = {"prompting": plot_bars(
        {"category, in-style": {v: pr[v]["in-style"]["category"]["acc1"] for v in variants},
         "category, new-style": {v: pr[v]["new-style"]["category"]["acc1"] for v in variants},
         "subcategory, in-style": {v: pr[v]["in-style"]["subcategory"]["acc1"] for v in variants
                                   if "subcategory" in pr[v]["in-style"]}},
        d / f"{prefix}prompting.png", title="(a) zero-shot top-1 by prompt (unseen concepts)")}
    best = res["best_template"]
    for task in ("category", "subcategory"):
        fs = res["fewshot"][task]
        summary = {int(k): tuple(v) for k, v in fs["summary"].items()}
        zero = {lbl: pr[lbl]["in-style"][task]["acc1"]
                for lbl in dict.fromkeys(["bare label", best, MEMBER_NAMES, CLASS_PROMPTS])
                if lbl in pr and task in pr[lbl]["in-style"]}
        out[f"fewshot_{task}"] = plot_few_shot(summary, d / f"{prefix}fewshot_{task}.png", zero_shot=zero,
                                               title=f"(b) {task}: zero-shot vs k-shot linear probe (in-style)")
    points = {f"zero-shot, {v}": (pr[v]["in-style"]["category"]["acc1"], pr[v]["new-style"]["category"]["acc1"])
              for v in variants}
    points["linear probe (all in-style train)"] = (res["probe"]["in-style"]["acc1"], res["probe"]["new-style"]["acc1"])
    fs = res["fewshot"]["category"]
    for k in ("1", "4", "16"):
        if k in fs["summary"] and k in fs["new_style"]:
            points[f"{k}-shot probe"] = (fs["summary"][k][0], fs["new_style"][k][0])
    if "baseline" in res:
        b = res["baseline"]
        points["linear probe, random-init model"] = (b["probe"]["in-style"]["acc1"], b["probe"]["new-style"]["acc1"])
    trails = {}
    if res.get("trajectory"):
        traj = res["trajectory"]
        trails[f"zero-shot ({best}) over training"] = [
            (t["zero_shot"][best]["in-style"], t["zero_shot"][best]["new-style"]) for t in traj]
        if MEMBER_NAMES in traj[0]["zero_shot"]:
            trails["zero-shot (member names) over training"] = [
                (t["zero_shot"][MEMBER_NAMES]["in-style"], t["zero_shot"][MEMBER_NAMES]["new-style"]) for t in traj]
        trails["linear probe over training"] = [(t["probe"]["in-style"], t["probe"]["new-style"]) for t in traj]
    curves = {}
    trend = probe_trend(res)
    if trend is not None:
        lo = min(x for x, _ in points.values())
        hi = max(x for x, _ in points.values())
        grid = np.linspace(max(lo * 0.8, 1e-3), min(hi * 1.1, 0.999), 50)
        curves["linear-probe trend (logit fit)"] = [(float(x), trend_predict(trend, float(x))) for x in grid]
    out["robustness"] = plot_robustness(points, d / f"{prefix}robustness.png", chance=res["chance"]["category_acc1"],
                                        title="(c) category top-1 under a drawing-style shift", trails=trails,
                                        curves=curves)
    out["confusion"] = plot_confusion(np.array(res["confusion"]["new-style"]), res["categories"],
                                      d / f"{prefix}confusion.png",
                                      title=f"zero-shot categories, new styles ({best})")
    return out


def _summary(res: dict[str, Any]) -> list[str]:
    """One bullet per question, worded from the numbers (so a rerun cannot contradict its own text)."""
    pr, fs = res["prompting"], res["fewshot"]["category"]

    def acc(v: str, split: str = "in-style") -> float:
        return pr[v][split]["category"]["acc1"]

    bare = acc("bare label")
    singles = {v: acc(v) - bare for v in TEMPLATE_VARIANTS if v != "bare label" and not v.startswith("ensemble")}
    ens = {v: acc(v) - bare for v in TEMPLATE_VARIANTS if v.startswith("ensemble")}
    n = res["n_images"]["in-style"]
    se = math.sqrt(bare * (1 - bare) / n)
    out = [f"- (a) Templates vs the bare label ({fmt_pct(bare)}% ± {100 * se:.1f}, 1 s.e. on {n} images): single templates "
           + ", ".join(f"{100 * d:+.1f}" for d in singles.values()) + ", ensembles "
           + ", ".join(f"{100 * d:+.1f}" for d in ens.values()) + " points"
           + (" — prompt engineering did not pay here (the paper: +1.3 / +3.5 on ImageNet)."
              if max([*singles.values(), *ens.values()]) <= 0.005 else ".")]
    if MEMBER_NAMES in pr:
        out[-1] += (f" Describing each class by its training concepts' names (text only) reaches "
                    f"{fmt_pct(acc(MEMBER_NAMES))}%: the class *text* mattered far more than the template.")
    zs = acc(MEMBER_NAMES) if MEMBER_NAMES in pr else acc(res["best_template"])
    k = fs.get("catch_up", {}).get(MEMBER_NAMES if MEMBER_NAMES in pr else res["best_template"])
    k_bare = fs.get("catch_up", {}).get("bare label")
    kmax = max(int(k_) for k_ in fs["summary"])
    out.append(f"- (b) The k-shot probe (same features) reaches the bare-label zero-shot accuracy at k = "
               f"{k_bare or f'>{kmax}'} and the best zero-shot classifier ({fmt_pct(zs)}%) at k = {k or f'>{kmax}'} "
               "(the paper: about 4).")
    trend = probe_trend(res)
    if trend is not None:
        ers = {v: effective_robustness(trend, acc(v), acc(v, "new-style")) for v in [*TEMPLATE_VARIANTS, MEMBER_NAMES]
               if v in pr}
        p = res["probe"]
        lo_probe = min(v[0] for v in fs["summary"].values())
        inside = {v: e for v, e in ers.items() if acc(v) >= lo_probe}
        text = (f"- (c) Under the style shift the in-style linear probe drops {fmt_pct(p['in-style']['acc1'])} → "
                f"{fmt_pct(p['new-style']['acc1'])}%; zero-shot classifiers sit "
                f"{100 * min(ers.values()):+.1f} to {100 * max(ers.values()):+.1f} points above the probes' trend "
                "(effective robustness")
        if inside:
            text += ("; within the probes' accuracy range (no extrapolation): "
                     + ", ".join(f"{v} {100 * e:+.1f}" for v, e in inside.items()))
        out.append(text + "). The paper: zero-shot CLIP closes up to 75% of the robustness gap at 400M pairs.")
    r_in, r_new = res["retrieval"]["in-style"], res["retrieval"]["new-style"]
    out.append(f"- (d) Unseen names: image→name R@1 {fmt_pct(r_in['text_retrieval_recall@1'])}% in-style, "
               f"{fmt_pct(r_new['text_retrieval_recall@1'])}% in new styles (chance "
               f"{fmt_pct(res['chance']['text_R@1_in-style'])}%); R@10 {fmt_pct(r_in['text_retrieval_recall@10'])}% / "
               f"{fmt_pct(r_new['text_retrieval_recall@10'])}%.")
    return out


def render_markdown(res: dict[str, Any], plots: dict[str, Path], md_dir: str | os.PathLike[str], *,
                    setup: Sequence[str] = ()) -> str:
    """The BENCHMARKS.md section: setup, then (a)-(d) as tables with the numbers' reading."""
    rel = {k: os.path.relpath(p, md_dir) for k, p in plots.items()}
    pr, fs, ch = res["prompting"], res["fewshot"], res["chance"]
    best = res["best_template"]
    lines = ["## Zero-shot, probes, style shift: the paper's findings on emoji (`torchclip eval`)", "", *setup, "",
             "**Summary** (category = 9 classes, val concepts never seen in training):", "", *_summary(res), ""]
    lines += ["### (a) Prompting: bare label vs one template vs an ensemble", "",
              f"Zero-shot top-1 (%) on the val concepts (never seen in training). Category: {len(res['categories'])} classes; "
              f"subcategory: {res['n_subcategories']} classes (chance {fmt_pct(ch['subcategory_acc1'])} / top-5 "
              f"{fmt_pct(ch['subcategory_acc5'])}).", ""]
    bare = pr["bare label"]["in-style"]["category"]["acc1"]
    rows = []
    for v, r in pr.items():
        sub = r["in-style"].get("subcategory")
        rows.append([v, fmt_pct(r["in-style"]["category"]["acc1"]),
                     f"{100 * (r['in-style']['category']['acc1'] - bare):+.1f}",
                     fmt_pct(r["new-style"]["category"]["acc1"]),
                     fmt_pct(sub["acc1"]) if sub else "", fmt_pct(sub["acc5"]) if sub else "",
                     fmt_pct(r["new-style"]["subcategory"]["acc1"]) if sub else ""])
    lines += _table(["prompt", "category in-style", "Δ vs bare", "category new-style", "subcat in-style top-1",
                     "subcat in-style top-5", "subcat new-style top-1"], rows)
    lines += ["Labels are prompted as written ('food & drink', 'animal-mammal'); *edited names* is the "
              "mechanical edit 'food and drink', 'animal mammal' (the paper hand-edited ImageNet's names for "
              "+1.5%). *+ name parts* adds the halves of a two-part "
              "category ('animals', 'nature') as synonyms; *training-concept names* describes each class by "
              "the names of its training concepts ('pizza', 'taco', ... for Food & Drink), averaged: text only, "
              "no labelled image, and no val concept among them; it uses which category each training concept "
              "belongs to, so it is not zero-shot in the strict sense. *Class prompts* describe each category by "
              "a line written from its name plus the names of its Unicode subcategories "
              "(`experiments/emoji_category_prompts.json`, chosen on held-out train concepts by "
              "`experiments/emoji_prompts.py`): label-side text only.", "",
              f"Best in-style template set: **{best}** (picked on this same val split, so its own figure is slightly "
              "optimistic; the other rows are not selected).", "",
              f"![prompting]({rel['prompting']})", "",
              "The paper (ImageNet, 400M pairs): one template +1.3 points over the bare label, an 80-template "
              "ensemble +3.5, both together about +5.", ""]
    lines += ["### (b) Zero-shot vs k-shot linear probes", "",
              "Logistic regression (L-BFGS, C searched on a validation draw from other training concepts) on "
              "frozen pre-projection image features; k examples per class drawn from the training concepts "
              "(google + twitter train); scored on the in-style val concepts; mean ± std over seeds.", ""]
    ks = list(fs["category"]["summary"])
    rows = [[k, _ms(fs["category"]["summary"][k]), _ms(fs["subcategory"]["summary"][k])] for k in ks]
    for lbl in [x for x in dict.fromkeys(["bare label", best, MEMBER_NAMES, CLASS_PROMPTS]) if x in pr]:
        sub = pr[lbl]["in-style"].get("subcategory")
        rows.append([f"zero-shot, {lbl}", fmt_pct(pr[lbl]["in-style"]["category"]["acc1"]),
                     fmt_pct(sub["acc1"]) if sub else ""])
    rows.append(["all training data (C swept)", fmt_pct(res["probe"]["in-style"]["acc1"]), ""])
    lines += _table(["k per class", f"category top-1 ({len(fs['category']['seeds'])} seeds)",
                     f"subcategory top-1 ({len(fs['subcategory']['seeds'])} seeds)"], rows)
    for task in ("category", "subcategory"):
        for lbl, k in fs[task]["catch_up"].items():
            lines.append(f"- {task}, zero-shot with {lbl}: the k-shot probe catches up at "
                         + (f"**k = {k}**." if k is not None else f"no k ≤ {ks[-1]} (zero-shot stays ahead)."))
    lines += ["", "The paper: zero-shot CLIP matches a 4-shot linear probe on the same features (ImageNet-scale "
              "average over 20 datasets); 16-shot probes overtake it on most.", "",
              f"![few-shot category]({rel['fewshot_category']}) ![few-shot subcategory]({rel['fewshot_subcategory']})",
              ""]
    lines += ["### (c) Drawing-style shift: effective robustness in miniature", "",
              "Category top-1 (%) on the val concepts, in the training styles and in two styles never seen "
              "in training. The probe is trained on in-style training images only.", ""]
    trend = probe_trend(res)

    def shift_row(label: str, a: float, b: float, per_style: Sequence[str] = ("",) * 4) -> list[str]:
        er = effective_robustness(trend, a, b)
        return [label, fmt_pct(a), fmt_pct(b), f"{100 * (b - a):+.1f}",
                "" if er is None else f"{100 * er:+.1f}", *per_style]

    rows = []
    for v in [*TEMPLATE_VARIANTS, MEMBER_NAMES, CLASS_PROMPTS]:
        if v in pr:
            cat = {k: pr[v][k]["category"]["acc1"] for k in pr[v]}
            rows.append(shift_row(f"zero-shot, {v}", cat["in-style"], cat["new-style"],
                                  [fmt_pct(cat[s]) for s in IN_STYLES + NEW_STYLES]))
    p = res["probe"]
    rows.append(shift_row("linear probe (in-style train)", p["in-style"]["acc1"], p["new-style"]["acc1"],
                          [fmt_pct(p["per_style"][s]["acc1"]) for s in IN_STYLES + NEW_STYLES]))
    for k in fs["category"]["new_style"]:
        rows.append(shift_row(f"{k}-shot probe", fs["category"]["summary"][k][0], fs["category"]["new_style"][k][0]))
    if "baseline" in res:
        b = res["baseline"]["probe"]
        rows.append(shift_row("linear probe, random-init model", b["in-style"]["acc1"], b["new-style"]["acc1"]))
    lines += _table(["method", "in-style", "new-style", "Δ (shift)", "eff. robustness", *IN_STYLES, *NEW_STYLES],
                    rows)
    lines += ["*Effective robustness*: new-style accuracy minus what the trend of the trained model's linear "
              "probes (k-shot, full, and every checkpoint's; fitted in logit space) predicts at the same "
              "in-style accuracy. Positive means more robust than adapting to the training styles would be.", ""]
    if res.get("trajectory"):
        lines += ["Along training (each saved checkpoint is one model; category top-1 %, in-style → new-style):", ""]
        cols = [c for c in dict.fromkeys([best, "bare label", MEMBER_NAMES]) if c in res["trajectory"][0]["zero_shot"]]

        def shift(d: dict[str, float]) -> str:
            return f"{fmt_pct(d['in-style'])} → {fmt_pct(d['new-style'])}"

        rows = [[t["step"], *(shift(t["zero_shot"][c]) for c in cols), shift(t["probe"])] for t in res["trajectory"]]
        lines += _table(["step", *(f"zero-shot, {c}" for c in cols), "linear probe"], rows)
    lines += [f"![robustness]({rel['robustness']}) ![confusion]({rel['confusion']})", "",
              "The paper (Fig. 13-14): adapting to ImageNet with a linear probe raises ImageNet accuracy but "
              "gives back part of zero-shot CLIP's robustness on the shifted sets; zero-shot models sit "
              "closer to y = x than supervised ones.", ""]
    lines += ["### (d) Concepts never seen in training: categories, subcategories, names", "",
              "Zero-shot with the best in-style template set "
              f"({best}); retrieval ranks the val names (one per concept, the caption text the model "
              "was trained on for other concepts) against the images, both directions, recall@K (%).", ""]
    rows = []
    for k in res["n_images"]:
        zc, zs, rt = pr[best][k]["category"], pr[best][k]["subcategory"], res["retrieval"][k]
        rows.append([k, res["n_images"][k], fmt_pct(zc["acc1"]), fmt_pct(zc["mean_per_class_recall"]),
                     fmt_pct(zs["acc1"]), fmt_pct(zs["acc5"]),
                     " / ".join(fmt_pct(rt[f"text_retrieval_recall@{r}"]) for r in (1, 5, 10)),
                     " / ".join(fmt_pct(rt[f"image_retrieval_recall@{r}"]) for r in (1, 5, 10)),
                     f"{rt['text_retrieval_median_rank']:.0f} / {rt['image_retrieval_median_rank']:.0f}",
                     res["n_names"][k]])
    n_in = res["n_names"]["in-style"]
    rows.append(["chance (in-style)", "", fmt_pct(ch["category_acc1"]), fmt_pct(ch["category_acc1"]),
                 fmt_pct(ch["subcategory_acc1"]), fmt_pct(ch["subcategory_acc5"]),
                 " / ".join(fmt_pct(ch[f"text_R@{r}_in-style"]) for r in (1, 5, 10)),
                 " / ".join(fmt_pct(ch[f"image_R@{r}_in-style"]) for r in (1, 5, 10)),
                 f"{ch['text_retrieval_median_rank_in-style']:.0f} / {ch['image_retrieval_median_rank_in-style']:.0f}",
                 n_in])
    lines += _table(["val split", "images", "category top-1", "category mean recall", "subcat top-1",
                     "subcat top-5", "image→name R@1/5/10", "name→image R@1/5/10", "median rank i→n / n→i",
                     "names"], rows)
    return "\n".join(lines) + "\n"
