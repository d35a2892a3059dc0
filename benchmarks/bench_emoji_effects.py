"""What JPEG draft decoding and int8 quantization do to emoji zero-shot accuracy.

    .venv/bin/python benchmarks/bench_emoji_effects.py --checkpoint runs/emoji-v1/<checkpoint> \
        --out benchmarks/results_emoji_effects.json

Task: zero-shot *category* classification (the README's benchmark: 9 categories, ``Component`` excluded)
on ``google-val`` + ``twitter-val``, prompt ``"an emoji of {}."`` with the raw category names (as
``torchclip train`` evaluates), top-1 accuracy and mean per-class
recall, plus the share of images whose prediction changes against the baseline (more sensitive than
accuracy on ~400 images).

Variants (same model):

* ``baseline``: eager PyTorch fp32, images decoded exactly (the shards hold 64 px PNGs);
* ``onnx_fp32``, ``onnx_int8_image`` (int8 image tower, fp32 text classifier), ``onnx_int8_both``;
* draft mode never triggers on the shards themselves (PNG, and no larger than a 64 px model input), so the
  images are re-encoded as large JPEGs (upscaled ``--jpeg-scale`` x, quality 90) to give it something to
  do: ``jpeg_exact`` vs ``jpeg_draft`` (factor ``--draft``) on the same files.

Without ``--checkpoint`` a random-init ``cpu-vit-64`` runs: feature cosines are reported, accuracies are not
meaningful and are marked so.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchclip.embed import ModelSpec, encode_images
from torchclip.embed.decode import normalize_batch, open_image, prepare_pixels
from torchclip.evaluation.datasets import decode_image, load_webdataset
from torchclip.evaluation.templates import prompt_name
from torchclip.export import OnnxTower, export_onnx, quantize_int8

REPO = Path(__file__).resolve().parents[1]
EMOJI = REPO.parent / "shared" / "data" / "emoji"
TEMPLATE = "an emoji of {}."


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def scores(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    recalls = [float((pred[labels == c] == c).mean()) for c in range(n_classes) if (labels == c).any()]
    return {"top1": float((pred == labels).mean()), "mean_per_class_recall": float(np.mean(recalls))}


def classifier(text_feats: np.ndarray) -> np.ndarray:
    """One prompt per class here, so the class vector is the normalized prompt embedding."""
    return unit(text_feats)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a model trained on the emoji data (torchclip train output)")
    p.add_argument("--tokenizer", help="its vocabulary (default: found next to the checkpoint)")
    p.add_argument("--jpeg-scale", type=int, default=8, help="upscale factor of the JPEG re-encoding")
    p.add_argument("--draft", type=float, default=2.0)
    p.add_argument("--readable-names", action="store_true", help="'food and drink' instead of 'Food & Drink'")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_emoji_effects.json"))
    args = p.parse_args()

    if args.checkpoint:
        spec = ModelSpec(args.checkpoint, tokenizer=args.tokenizer).normalized()
    else:
        tok = args.tokenizer or str(REPO.parent / "shared" / "fixtures" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
        spec = ModelSpec("cpu-vit-64", random_init=True, tokenizer=tok)
    model = spec.load_model()
    tokenizer = spec.load_tokenizer(model)
    size = model.config.vision.image_size
    ds = load_webdataset([EMOJI / "google-val.tar", EMOJI / "twitter-val.tar"], label_key="json:category",
                         exclude_classes=["Component"])
    names = list(ds.classnames)
    labels = np.asarray(ds.labels)
    images = [decode_image(ref) for ref in ds.refs]
    # Class names as the trainer's evaluation writes them (raw CLDR category names), so that the baseline
    # equals the accuracy ``torchclip train`` logs for the checkpoint.
    prompts = [TEMPLATE.replace("{}", prompt_name(n) if args.readable_names else n) for n in names]
    ids = tokenizer(prompts, context_length=model.config.text.context_length, truncate=True)
    with torch.inference_mode():
        text_fp32 = model.encode_text(ids).numpy()
    pixels = np.stack([prepare_pixels(img, size) for img in images])
    x = normalize_batch(pixels)
    feats: dict[str, np.ndarray] = {"baseline": encode_images(model, images)}
    text_for: dict[str, np.ndarray] = {"baseline": text_fp32}

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        paths = export_onnx(model, tmp)
        q_img = quantize_int8(paths["image"], tmp / "image.int8.onnx")
        q_txt = quantize_int8(paths["text"], tmp / "text.int8.onnx")
        img32, img8 = OnnxTower(paths["image"]), OnnxTower(q_img)
        txt32, txt8 = OnnxTower(paths["text"]), OnnxTower(q_txt)
        feats["onnx_fp32"], text_for["onnx_fp32"] = unit(img32(x)), txt32(ids)
        feats["onnx_int8_image"], text_for["onnx_int8_image"] = unit(img8(x)), text_fp32
        feats["onnx_int8_both"], text_for["onnx_int8_both"] = feats["onnx_int8_image"], txt8(ids)

        # Large JPEG versions of the same pictures, decoded exactly and in draft mode.
        jpegs = []
        for img in images:
            big = img.convert("RGB").resize((img.width * args.jpeg_scale, img.height * args.jpeg_scale),
                                            Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, format="JPEG", quality=90)
            jpegs.append(buf.getvalue())
        exact = [open_image(b) for b in jpegs]
        draft = [open_image(b, draft_size=size, draft_factor=args.draft) for b in jpegs]
        feats["jpeg_exact"], text_for["jpeg_exact"] = encode_images(model, exact), text_fp32
        feats["jpeg_draft"], text_for["jpeg_draft"] = encode_images(model, draft), text_fp32
        draft_size = draft[0].size

    preds: dict[str, np.ndarray] = {}
    result: dict = {"checkpoint": args.checkpoint, "model_preset_random_init": None if args.checkpoint else "cpu-vit-64",
                    "images": len(images), "classes": names, "template": TEMPLATE,
                    "jpeg": f"{images[0].width * args.jpeg_scale}px q90", "draft_decoded_size": list(draft_size),
                    "variants": {}}
    for name, f in feats.items():
        preds[name] = pred = (unit(f) @ classifier(text_for[name]).T).argmax(1)
        ref = "jpeg_exact" if name == "jpeg_draft" else "baseline"
        entry = scores(pred, labels, len(names))
        entry["reference"] = ref
        entry["changed_predictions_vs_reference"] = float((pred != preds[ref]).mean())
        c = (unit(f) * unit(feats[ref])).sum(1)
        entry["feature_cosine_to_reference"] = {"mean": float(c.mean()), "min": float(c.min())}
        result["variants"][name] = entry
    if not args.checkpoint:
        result["note"] = "random-init model: accuracies are chance level and not meaningful; cosines are"
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
