"""The emoji benchmark (shared/data/emoji/README.md): evaluate a trained model, ours or OpenCLIP's, one way.

Training is ``torchclip train --config configs/emoji.yaml`` (ours) or OpenCLIP's trainer (the peer; the
command is in benchmarks/results_train.md). This script scores any checkpoint torchclip reads -- our run
folders and OpenCLIP's ``epoch_N.pt`` alike -- with the protocol's zero-shot tasks, so both sides are
measured by the same code:

* in-style: google-val + twitter-val; new styles: openmoji-val, fluent-flat-val (never seen in training);
* classes from each sample's .json: ``name`` (the 199 unseen val concepts; image->text recall@K over the
  val names is "name retrieval"), ``category`` (9, without Component) and ``subcategory``;
* prompts: "an emoji of {}.".

    python benchmarks/emoji_train.py runs/emoji/model.safetensors --tokenizer runs/emoji/tokenizer.txt.gz
    python benchmarks/emoji_train.py runs/peer/logs/peer5/checkpoints/epoch_5.pt --activation gelu \
        --tokenizer ../shared/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from torchclip.checkpoints import load_model
from torchclip.tokenizer import Tokenizer, check_compatible, load_tokenizer
from torchclip.train.evaluate import evaluate_sets, load_eval_sets

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emoji"
SETS = {"in-style": ("google-val", "twitter-val"), "openmoji": ("openmoji-val",), "fluent-flat": ("fluent-flat-val",)}
KEYS = ("name", "category", "subcategory")
TEMPLATES = ("an emoji of {}.",)


def evaluate(checkpoint: str, tokenizer: str | None, activation: str | None = None,
             data: Path = DATA) -> dict[str, float]:
    model = load_model(checkpoint, activation=activation)
    ctx = model.config.text.context_length
    tok = Tokenizer.from_file(tokenizer, context_length=ctx) if tokenizer else load_tokenizer(context_length=ctx)
    check_compatible(tok, model.config.text)
    specs = [f"{name}={'::'.join(str(data / f'{s}.tar') for s in shards)}" for name, shards in SETS.items()]
    sets = load_eval_sets(specs, model.config.vision.image_size)
    with torch.no_grad():
        return evaluate_sets(model, tok, sets, KEYS, TEMPLATES, exclude=("Component",))


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per model, name R@1/5/10, category acc/balanced acc, subcategory top-1/top-5.
    Name image->text recall@K over the val names is the name's top-K accuracy (``name/accK``)."""
    head = ("| model | style | name i2t R@1 | R@5 | R@10 | name t2i R@1 | category acc1 | category mean recall "
            "| subcategory acc1 | subcategory acc5 |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for model, r in results.items():
        for style in SETS:
            def g(k: str, r: dict[str, float] = r, style: str = style) -> str:
                v = r.get(f"{style}/{k}")
                return "-" if v is None else f"{100 * v:.1f}"

            lines.append(f"| {model} | {style} | {g('name/acc1')} | {g('name/acc5')} | {g('name/acc10')} "
                         f"| {g('name/t2i_R@1')} | {g('category/acc1')} | {g('category/mean_per_class_recall')} "
                         f"| {g('subcategory/acc1')} | {g('subcategory/acc5')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--tokenizer", help="merges file the model was trained with (default: OpenAI's)")
    p.add_argument("--activation", help="override the activation the checkpoint implies (OpenCLIP runs: gelu)")
    p.add_argument("--label", default=None, help="row label in the table")
    p.add_argument("--json", type=Path, help="append {label: metrics} to this JSON file")
    args = p.parse_args(argv)
    res = evaluate(args.checkpoint, args.tokenizer, args.activation)
    label = args.label or args.checkpoint
    print(table({label: res}))
    if args.json:
        doc = json.loads(args.json.read_text()) if args.json.exists() else {}
        doc[label] = res
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
