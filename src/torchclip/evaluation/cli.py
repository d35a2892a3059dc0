"""``torchclip eval``: zero-shot, linear probe, few-shot probe and retrieval from the command line.

    torchclip eval zeroshot  --model run/ckpt.safetensors --dataset val.tar --label-key json:category \\
                             --templates bare photo ensemble --output zs.json --confusion-plot cm.png
    torchclip eval probe     --model ... --train train.tar --test val.tar --label-key json:category
    torchclip eval fewshot   --model ... --train train.tar --test val.tar --k 1 2 4 8 16 --seeds 0 1 2
    torchclip eval retrieval --model ... --dataset val.tar --caption-key txt --recall-k 1 5 10
    torchclip eval clip-benchmark eval --model_type torchclip --model cpu-vit-64 --pretrained ckpt ...

Datasets are image folders, WebDataset shards (``a.tar::b.tar``) or CSV files; results print as a table
and, with ``--output``, are written in CLIP_benchmark's JSON layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import CommandParser, add_quiet, command, nonnegative_int, positive_int

if TYPE_CHECKING:
    import torch

__all__ = ["main", "build_parser"]


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="preset name or checkpoint path")
    g.add_argument("--pretrained", default=None, help="'openai', a checkpoint path, or omit for the file/random")
    g.add_argument("--tokenizer", default=None, help="merges file / HF folder (default: saved with the checkpoint)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=positive_int, default=64)
    g.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader workers for image decoding")
    g.add_argument("--cache-dir", default=None, help="feature/classifier cache (default $TORCHCLIP_CACHE/eval)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    g.add_argument("--output", default=None, help="write results as CLIP_benchmark JSON here")
    add_quiet(g)
    d = p.add_argument_group("dataset")
    d.add_argument("--dataset-kind", choices=("folder", "wds", "csv"), default=None, help="default: guessed")
    d.add_argument("--dataset-name", default=None, help="name in the JSON (default: from the path)")
    d.add_argument("--label-key", default=None, help="wds: 'cls' or 'json:<field>'; csv: the label column")
    d.add_argument("--caption-key", default=None, help="wds: 'txt' or 'json:<field>'; csv: the caption column")
    d.add_argument("--image-key", default="filepath", help="csv: the image-path column")
    d.add_argument("--classnames", default=None,
                   help="class names file (json/txt; 'file.json:KEY' picks a list) fixing the label order")
    d.add_argument("--exclude-class", action="append", default=[], help="drop samples of this class (repeatable)")
    d.add_argument("--trim-margin", action="store_true",
                   help="crop each image to the square around its non-white content first (icons, emoji, clip art)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="torchclip eval", description=__doc__.split("\n\n")[0],
        epilog="torchclip eval clip-benchmark ARGS... runs CLIP_benchmark's own command line with "
               "'--model_type torchclip' available (needs clip_benchmark installed; pass --no_amp).")
    sub = parser.add_subparsers(dest="command", required=True)
    zs = sub.add_parser("zeroshot", help="zero-shot classification")
    _common(zs)
    zs.add_argument("--dataset", required=True)
    zs.add_argument("--templates", nargs="+", default=None,
                    help="set names (bare, photo, ensemble, emoji), files, or templates with {} (default: photo)")
    zs.add_argument("--class-prompts", default=None,
                    help="JSON {class: [prompt, ...]} (CuPL's layout; lists of lists weigh groups equally): each "
                         "class's own prompts, in place of names and templates")
    zs.add_argument("--prompt-names", default=None,
                    help="file of the names to put in prompts, aligned with the classes (default: class names)")
    zs.add_argument("--readable-names", action="store_true", help="'animal-mammal' -> 'animal mammal' in prompts")
    zs.add_argument("--confusion-plot", default=None, help="PNG path (first template set)")
    zs.add_argument("--hubness-bank", default=None,
                    help="reference images (e.g. the training set; never the test set): each class's score is "
                         "lowered by half its mean cosine with its --hubness-k nearest of them (CSLS)")
    zs.add_argument("--hubness-k", type=positive_int, default=10, help="nearest bank images per class (default 10)")
    for name, help_ in (("probe", "linear probe (paper protocol)"), ("fewshot", "k-shot linear probes")):
        sp = sub.add_parser(name, help=help_)
        _common(sp)
        sp.add_argument("--train", required=True)
        sp.add_argument("--test", required=True)
        sp.add_argument("--features", choices=("pre_projection", "embedding"), default="pre_projection")
        sp.add_argument("--C", type=float, default=None, help="fixed C (default: validation sweep)")
        sp.add_argument("--normalize", choices=("none", "l2", "standardize"), default="none")
        sp.add_argument("--group-key", default=None, help="metadata field keeping related images in one split")
        if name == "probe":
            sp.add_argument("--val", default=None, help="validation set (default: 20%% of train)")
        else:
            sp.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
            sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            sp.add_argument("--val-per-class", type=int, default=8)
            sp.add_argument("--plot", default=None, help="PNG path for accuracy vs k")
    rt = sub.add_parser("retrieval", help="image<->text retrieval recall@K")
    _common(rt)
    rt.add_argument("--dataset", required=True)
    rt.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    rt.add_argument("--text-template", default="{}", help="wrap captions, e.g. 'a photo of {}'")
    return parser


def _dataset(args: argparse.Namespace, spec: str) -> Any:
    from .datasets import guess_kind, open_dataset
    from .templates import load_classnames

    classnames = None
    extra: list[str] = []
    if args.classnames:
        classnames = [c if isinstance(c, str) else c[0] for c in load_classnames(args.classnames)]
        # A class list of the evaluated classes only (CLIP_benchmark's classnames.txt) omits the excluded
        # ones: name them too while labelling, so their samples can be dropped rather than be "unknown".
        extra = [c for c in dict.fromkeys(args.exclude_class) if c not in classnames]
        classnames += extra
    kind = args.dataset_kind or guess_kind(spec)
    kw: dict[str, Any] = {"classnames": classnames}
    if kind == "wds":
        kw.update(label_key=args.label_key, caption_key=args.caption_key or "txt")
    elif kind == "csv":
        kw.update(image_col=args.image_key, label_col=args.label_key, caption_col=args.caption_key)
    ds = open_dataset(spec, kind, **kw)
    absent = [c for c in extra if not (ds.labels == classnames.index(c)).any()]
    if absent:  # as without --classnames: excluding a class the data does not have is a typo
        raise ValueError(f"unknown class name(s) {absent} to exclude: in neither {args.classnames} nor the data")
    ds = ds.drop_classes(args.exclude_class)
    if args.dataset_name:
        ds.name = args.dataset_name
    return ds.require_nonempty()


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .clip_benchmark import load_model, resolve_tokenizer

    model, ckpt = load_model(args.model, args.pretrained, args.device)
    return model, resolve_tokenizer(model, args.tokenizer, ckpt)


def _transform(args: argparse.Namespace, model: Any) -> Any:
    """The images' preprocessing: the model's eval transform, after ``trim_margin`` with --trim-margin."""
    from ..transforms import TrimMargin, image_transform

    return TrimMargin(image_transform(model.config.vision.image_size)) if args.trim_margin else None


def _cache(args: argparse.Namespace) -> Any:
    return False if args.no_cache else args.cache_dir


def _pretrained_label(args: argparse.Namespace) -> str:
    return str(args.pretrained) if args.pretrained else ("" if not Path(args.model).exists() else str(args.model))


def _emit(args: argparse.Namespace, docs: list[dict[str, Any]]) -> None:
    from .clip_benchmark import write_benchmark_json

    if args.output:
        path = write_benchmark_json(args.output, docs[0]) if len(docs) == 1 else Path(args.output)
        if len(docs) > 1:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(docs, indent=2) + "\n")
        print(f"wrote {path}")


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v * 100:.2f}" if v == v else f"{k}=n/a" for k, v in metrics.items())


def _zeroshot(args: argparse.Namespace) -> int:
    from .clip_benchmark import benchmark_json
    from .features import extract_image_features
    from .templates import load_class_prompts, load_classnames, prompt_name
    from .zeroshot import evaluate_zeroshot

    if args.class_prompts and (args.templates or args.prompt_names or args.readable_names):
        raise ValueError("--class-prompts replaces --templates, --prompt-names and --readable-names: give one way")
    prompts = load_class_prompts(args.class_prompts) if args.class_prompts else None  # before the model loads
    model, tok = _load(args)
    ds = _dataset(args, args.dataset).require_labels()
    names: Any = load_classnames(args.prompt_names) if args.prompt_names else None
    if names is None and args.readable_names:
        names = [prompt_name(c) for c in ds.classnames]
    feats = extract_image_features(model, ds, _transform(args, model), batch_size=args.batch_size,
                                   num_workers=args.workers, cache_dir=_cache(args), progress=not args.quiet)
    bank, hub = None, {}
    if args.hubness_bank:
        from .datasets import guess_kind, open_dataset

        kw = {"image_col": args.image_key} if guess_kind(args.hubness_bank) == "csv" else {}
        bank_ds = open_dataset(args.hubness_bank, **kw).require_nonempty()
        bank = extract_image_features(model, bank_ds, _transform(args, model), batch_size=args.batch_size,
                                      num_workers=args.workers, cache_dir=_cache(args), progress=not args.quiet)
        if args.hubness_k > len(bank):
            raise ValueError(f"--hubness-k {args.hubness_k} is more than the {len(bank)} images of "
                             f"--hubness-bank {args.hubness_bank}")
        hub = {"hubness_bank": args.hubness_bank, "hubness_k": args.hubness_k}
    docs = []
    specs = [args.class_prompts] if prompts is not None else (args.templates or ["photo"])
    for i, spec in enumerate(specs):
        if prompts is not None:
            res = evaluate_zeroshot(model, ds, tok, class_prompts=prompts, image_features=feats,
                                    cache_dir=_cache(args), progress=not args.quiet, hubness_bank=bank,
                                    hubness_k=args.hubness_k)
            print(f"{ds.name}  class prompts={spec}  {_fmt(res.metrics)}")
        else:
            res = evaluate_zeroshot(model, ds, tok, spec, names, image_features=feats, cache_dir=_cache(args),
                                    progress=not args.quiet, hubness_bank=bank, hubness_k=args.hubness_k)
            print(f"{ds.name}  templates={spec} ({len(res.templates)})  {_fmt(res.metrics)}")
        docs.append(benchmark_json(dataset=ds.name, model=str(args.model), pretrained=_pretrained_label(args),
                                   task="zeroshot_classification", metrics=res.metrics,
                                   **{"class_prompts" if prompts is not None else "templates": spec}, **hub))
        if i == 0 and args.confusion_plot:
            from .plots import plot_confusion

            plot_confusion(res.confusion(), res.classnames, args.confusion_plot,
                           title=f"{ds.name}: zero-shot, {spec}")
            print(f"wrote {args.confusion_plot}")
    _emit(args, docs)
    return 0


def _probe_data(args: argparse.Namespace, spec: str, model: Any) -> tuple[Any, torch.Tensor]:
    from .features import extract_image_features

    ds = _dataset(args, spec).require_labels()
    feats = extract_image_features(model, ds, _transform(args, model), kind=args.features, batch_size=args.batch_size,
                                   num_workers=args.workers, cache_dir=_cache(args), progress=not args.quiet)
    return ds, feats


def _groups(args: argparse.Namespace, ds: Any) -> list[Any] | None:
    return [m.get(args.group_key) for m in ds.meta] if args.group_key else None


def _probe(args: argparse.Namespace) -> int:
    from .clip_benchmark import benchmark_json
    from .probe import few_shot_probe, format_mean_std, linear_probe

    model, _ = _load(args)
    train, tx = _probe_data(args, args.train, model)
    test, sx = _probe_data(args, args.test, model)
    if train.classnames != test.classnames:
        raise ValueError("train and test have different class names; pass --classnames to fix one order")
    common = dict(num_classes=train.num_classes, groups=_groups(args, train), C=args.C, normalize=args.normalize)
    if args.command == "probe":
        val = _probe_data(args, args.val, model) if args.val else None
        res = linear_probe(tx, train.labels, sx, test.labels, val_x=val[1] if val else None,
                           val_y=val[0].labels if val else None, **common)
        print(f"{test.name}  linear probe  C={res.C:.3g}  {_fmt(res.metrics)}")
        doc = benchmark_json(dataset=test.name, model=str(args.model), pretrained=_pretrained_label(args),
                             task="linear_probe", metrics=res.metrics, C=res.C, features=args.features)
        _emit(args, [doc])
        return 0
    res = few_shot_probe(tx, train.labels, sx, test.labels, ks=args.k, seeds=args.seeds,
                         val_per_class=args.val_per_class, **common)
    docs = []
    for k, (mean, std) in res.summary().items():
        print(f"{test.name}  {k:>3}-shot  acc1={format_mean_std(mean, std)}  (seeds {args.seeds})")
        metrics = {m: float(sum(r[m] for r in res.runs[k]) / len(res.runs[k])) for m in res.runs[k][0]}
        metrics["acc1_std"] = std
        docs.append(benchmark_json(dataset=test.name, model=str(args.model), pretrained=_pretrained_label(args),
                                   task="few_shot_linear_probe", metrics=metrics, k=k, seeds=list(args.seeds)))
    if args.plot:
        from .plots import plot_few_shot

        plot_few_shot(res.summary(), args.plot, title=f"{test.name}: k-shot linear probes")
        print(f"wrote {args.plot}")
    _emit(args, docs)
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from .clip_benchmark import benchmark_json
    from .retrieval import evaluate_retrieval

    model, tok = _load(args)
    args.caption_key = args.caption_key or "txt"
    ds = _dataset(args, args.dataset)
    res = evaluate_retrieval(model, ds, tok, ks=args.recall_k, transform=_transform(args, model),
                             text_template=args.text_template,
                             batch_size=args.batch_size, num_workers=args.workers, cache_dir=_cache(args),
                             progress=not args.quiet)
    print(f"{ds.name}  {len(ds)} images, {len(res.texts)} texts  {_fmt(res.metrics)}")
    _emit(args, [benchmark_json(dataset=ds.name, model=str(args.model), pretrained=_pretrained_label(args),
                                task="zeroshot_retrieval", metrics=res.metrics)])
    return 0


def _eval(argv: list[str]) -> int:
    if argv and argv[0] == "clip-benchmark":
        from .clip_benchmark import run_clip_benchmark

        return run_clip_benchmark(argv[1:])
    args = build_parser().parse_args(argv)
    run = {"zeroshot": _zeroshot, "probe": _probe, "fewshot": _probe, "retrieval": _retrieval}[args.command]
    return run(args)


main = command("torchclip eval", _eval)
