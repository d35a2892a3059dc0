"""The CLIP paper's evaluation findings at small scale, on the emoji benchmark, in one command.

    .venv/bin/python experiments/emoji_findings.py                       # train with `torchclip train`, then evaluate
    .venv/bin/python experiments/emoji_findings.py --checkpoint runs/emoji/model.safetensors   # evaluate a model

Training (unless --checkpoint is given) runs ``torchclip train`` in a subprocess on google-train + twitter-train
with the project's emoji config; evaluation runs (a) prompting, (b) zero-shot vs k-shot probes, (c) the
drawing-style shift and (d) unseen concepts (``emoji_report.py``), then writes
``experiments/results_eval.md``, ``experiments/results_eval.json`` (every number) and PNG plots under
``experiments/plots/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("TORCHCLIP_SHARED", REPO.parent / "shared")) / "data" / "emoji"
# The protocol's training set; every other setting comes from the config file.
TRAIN_SHARDS = "{data}/google-train.tar::{data}/twitter-train.tar"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the emoji folder (classes.json + shards)")
    p.add_argument("--checkpoint", type=Path, default=None, help="evaluate this model instead of training one")
    p.add_argument("--tokenizer", default=None, help="its vocabulary (default: found next to the checkpoint)")
    p.add_argument("--config", type=Path, default=None, help="training config (default: configs/emoji.yaml)")
    p.add_argument("--run-dir", type=Path, default=REPO / "runs" / "emoji_findings", help="training output")
    p.add_argument("--train-arg", action="append", default=[],
                   help="extra --section.key=value for torchclip train (repeatable)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results_eval.md")
    p.add_argument("--plots", type=Path, default=REPO / "experiments" / "plots")
    p.add_argument("--seeds", type=int, default=5, help="few-shot seeds (subcategory uses at most 3)")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-init probe baseline")
    p.add_argument("--no-trajectory", action="store_true",
                   help="skip evaluating the run's intermediate checkpoints (the robustness-plot trails)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default $TORCHCLIP_CACHE/eval)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for evaluation")
    p.add_argument("--from-json", type=Path, default=None,
                   help="only re-render the markdown and plots from a results JSON this script wrote")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[Path, str, float]:
    """Run ``torchclip train`` and return (the final model file, the command, seconds)."""
    config = args.config or REPO / "configs" / "emoji.yaml"
    if not config.is_file():
        raise SystemExit(f"no training config at {config}: pass --config, or --checkpoint to skip training")
    # every intermediate checkpoint is kept: each is one more model on the robustness plot (c)
    cmd = [sys.executable, "-m", "torchclip.train", "--config", str(config),
           f"--data.train={TRAIN_SHARDS.format(data=args.data)}", f"--run.output_dir={args.run_dir}",
           "--run.keep_checkpoints=1000", "--overwrite", *args.train_arg]
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    model = args.run_dir / "model.safetensors"
    if not model.is_file():
        raise SystemExit(f"training finished without {model}")
    shown = " ".join(["torchclip", "train", *cmd[3:]]).replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")
    return model, shown, time.time() - start


def _checkpoints(checkpoint: Path) -> list[Path]:
    """The run's intermediate training checkpoints (``checkpoints/ckpt-<step>.pt``), in step order."""
    for folder in (checkpoint.parent / "checkpoints", checkpoint.parent):
        found = [p for p in folder.glob("ckpt-*.pt") if p.stem.split("-")[-1].isdigit()]
        if found:
            return sorted(found, key=lambda p: int(p.stem.split("-")[-1]))
    return []


def _train_minutes(checkpoint: Path) -> float | None:
    """Wall time of the run that wrote ``checkpoint``, from its ``metrics.jsonl`` timestamps."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        log = folder / "metrics.jsonl"
        if log.is_file():
            times = [json.loads(line).get("time") for line in log.read_text().splitlines() if line.strip()]
            times = [t for t in times if t]
            return (max(times) - min(times)) / 60 if len(times) > 1 else None
    return None


def _config_path(checkpoint: Path) -> Path | None:
    """The ``torchclip train`` run config saved beside a checkpoint (run folder or its checkpoints/)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def _run_config(checkpoint: Path) -> dict | None:
    path = _config_path(checkpoint)
    return json.loads(path.read_text()) if path else None


def _rel(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def setup_lines(res: dict, json_path: Path) -> list[str]:
    """The report's setup paragraph, from ``res["setup"]`` alone (so ``--from-json`` can rebuild it)."""
    st = res["setup"]
    cfg = st["config"]
    v, t = cfg["vision"], cfg["text"]
    ckpt = Path(st["checkpoint"])
    if "encoder" in t:  # a pretrained language model as the text tower (LiT)
        enc = json.loads(t["encoder"])
        text = (f"text tower {t.get('source') or enc.get('model_type', 'a transformers encoder')} "
                f"({enc.get('hidden_size')} wide, {enc.get('num_hidden_layers')} layers, {t['pooling']} pooling, "
                f"{t['proj']} head) with its own {t['vocab_size']}-token tokenizer")
    else:
        text = f"text width {t['width']}, {t['layers']} layers, its own {t['vocab_size']}-token BPE vocabulary"
    lines = [f"Model: ViT image {v['image_size']}, patch {v['patch_size']}, width {v['width']}, {v['layers']} "
             f"layers; {text}; embedding {cfg['embed_dim']}"
             + (f"; {st['n_params'] / 1e6:.1f}M parameters." if st.get("n_params") else ".")]
    run = st.get("train_config") or {}
    steps = run.get("optim", {}).get("steps")
    batch = run.get("data", {}).get("batch_size")
    minutes = st["train_seconds"] / 60 if st.get("train_seconds") else st.get("train_minutes")
    how = (f"`{st['train_command']}`" if st.get("train_command")
           else f"`torchclip train --config configs/{'emoji-lit' if 'encoder' in t else 'emoji'}.yaml`" + (f" (run config `{_rel(_config_path(REPO / ckpt))}`)"
                                                                 if _config_path(REPO / ckpt) else ""))
    lines.append(f"Trained on google-train + twitter-train (2,648 pairs) by {how}"
                 + (f", {steps} steps of batch {batch}" if steps and batch else "")
                 + (f", in {minutes:.0f} min" if minutes else "") + f" on {st['machine']} shared with other jobs.")
    lines.append(f"Reproduce: `python experiments/emoji_findings.py` trains and evaluates in one command; "
                 f"`python experiments/emoji_findings.py --checkpoint {st['checkpoint']}` only evaluates "
                 f"({st['eval_seconds'] / 60:.0f} min here, image features cached). Every number: "
                 f"`{_rel(json_path)}`.")
    d = run.get("data", {})
    if d.get("templates") and d.get("template_prob"):
        lines.append(f"Note: the run wrapped training captions in {d['templates']} with probability "
                     f"{d['template_prob']} (and dropped keywords with p={d.get('tag_dropout', 0)}), so those "
                     "templates are in-distribution text here, unlike the paper's web captions.")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.from_json:
        from emoji_report import make_plots, render_markdown

        res = json.loads(args.from_json.read_text())
        plots = make_plots(res, args.plots)
        setup = setup_lines(res, args.from_json)
        args.out.write_text(render_markdown(res, plots, args.out.parent, setup=setup))
        print(f"wrote {args.out} and {len(plots)} plots in {args.plots}")
        return 0
    if not (args.data / "classes.json").is_file():
        raise SystemExit(f"emoji data not found at {args.data} (--data)")
    train_cmd, train_s = None, None
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint, train_cmd, train_s = train(args)
    # imported after training, which runs in its own process and may take a while
    from emoji_report import (
        baseline_probe,
        checkpoint_trajectory,
        make_plots,
        render_markdown,
        run_findings,
    )

    from torchclip import CLIP, load
    from torchclip.evaluation.clip_benchmark import resolve_tokenizer

    model, _ = load(checkpoint)
    tokenizer = resolve_tokenizer(model, args.tokenizer, checkpoint)
    start = time.time()
    prompts = json.loads((Path(__file__).resolve().parent / "emoji_category_prompts.json").read_text())
    res = run_findings(model, tokenizer, args.data, seeds=tuple(range(args.seeds)), cache_dir=args.cache_dir,
                       class_prompts=prompts)
    if not args.no_baseline:
        torch.manual_seed(0)
        res["baseline"] = baseline_probe(CLIP(model.config).eval(), args.data, cache_dir=args.cache_dir)
    ckpts = [] if args.no_trajectory else _checkpoints(checkpoint)
    if ckpts:
        res["trajectory"] = checkpoint_trajectory(ckpts, tokenizer, args.data, cache_dir=args.cache_dir)
    res["setup"] = {"checkpoint": _rel(checkpoint), "config": model.config.to_dict(), "train_command": train_cmd,
                    "train_seconds": train_s, "train_minutes": _train_minutes(checkpoint),
                    "eval_seconds": time.time() - start, "torch": torch.__version__,
                    "n_params": sum(p.numel() for p in model.parameters()),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "train_config": _run_config(checkpoint)}
    plots = make_plots(res, args.plots)
    json_path = args.out.with_suffix(".json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1, default=float) + "\n")  # first: a report error loses nothing
    md = render_markdown(res, plots, args.out.parent, setup=setup_lines(res, json_path))
    args.out.write_text(md)
    print(md)
    print(f"wrote {args.out}, {json_path} and {len(plots)} plots in {args.plots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
