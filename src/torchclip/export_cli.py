"""``torchclip export``: the command line over :mod:`torchclip.export` (ONNX towers, checked with ONNX Runtime,
optional int8 quantization), writing ``export.json`` that says what was written.

    torchclip export --model ViT-B/32 --out onnx/ --int8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cli import CommandError, CommandParser, UsageError, add_overwrite, command
from .embed.modelspec import add_model_arguments, spec_from_args

__all__ = ["build_parser", "main"]

TOWERS = ("image", "text")


def _towers(text: str) -> list[str]:
    towers = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in towers if t not in TOWERS]
    if bad or not towers:
        raise argparse.ArgumentTypeError(f"expected towers from {', '.join(TOWERS)} separated by commas, got {text!r}")
    return list(dict.fromkeys(towers))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="torchclip export", description="ONNX export of both towers with a dynamic batch "
                      "axis, checked with ONNX Runtime; optional int8 quantization.")
    p.add_argument("--out", required=True, help="output folder")
    add_overwrite(p, "an export already in --out")
    add_model_arguments(p)
    p.add_argument("--towers", type=_towers, default=list(TOWERS), help="image,text (default both)")
    p.add_argument("--normalize", action="store_true", help="output unit vectors instead of raw features")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset to write (default 18; the legacy exporter writes 14 and up, dynamo 18 and up)")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy",
                   help="torch.onnx exporter: legacy (TorchScript, default, fast) or dynamo (needs onnxscript)")
    p.add_argument("--int8", action="store_true", help="also write dynamically quantized int8 towers")
    p.add_argument("--atol", type=_positive_float, default=1e-4, help="max allowed |ONNX - PyTorch| (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    return p


def _tokenizer_or_none(spec: Any, model: Any) -> Any:
    """The model's vocabulary for the bundle; None (with a note) when it cannot be had, e.g. offline."""
    from .download import DownloadError

    try:
        return spec.load_tokenizer(model)
    except DownloadError as e:
        print(f"torchclip export: note: no tokenizer written beside the model ({e}); pass --tokenizer",
              file=sys.stderr)
        return None


def _export(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .export import (
        _NAMES,
        DEFAULT_OPSET,
        check_onnx,
        check_opset,
        export_onnx,
        quantize_int8,
        write_bundle,
        written_opset,
    )

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    try:
        check_opset(opset, args.exporter)
    except ValueError as e:
        raise UsageError(str(e)) from e
    out = Path(args.out)
    existing = sorted(p.name for p in out.glob("*_encoder*.onnx")) + (["export.json"] if (out / "export.json").exists() else [])
    if existing and not args.overwrite:
        raise UsageError(f"{out} already holds an export ({', '.join(existing)}): pass --overwrite to replace it, "
                         "or choose another --out")
    spec = spec_from_args(args)
    assert spec is not None
    model = spec.load_model("cpu")
    t0 = time.perf_counter()
    paths = export_onnx(model, out, towers=args.towers, normalize=args.normalize, opset=opset, exporter=args.exporter)
    opsets = {t: written_opset(p) for t, p in paths.items()}
    manifest: dict[str, Any] = {
        "model": spec.to_dict(), "config": model.config.to_dict(), "normalize": args.normalize,
        "opset": max(opsets.values()), "exporter": args.exporter,
        "export_seconds": round(time.perf_counter() - t0, 1),
        "towers": {t: {"file": p.name, "input": _NAMES[t][0], "output": _NAMES[t][1], "opset": opsets[t]}
                   for t, p in paths.items()},
        **write_bundle(model, out, _tokenizer_or_none(spec, model)),
    }
    if set(opsets.values()) != {opset}:
        print(f"torchclip export: note: opset {opset} was asked for, the files declare {opsets}", file=sys.stderr)
    if not args.no_check:
        diffs = check_onnx(model, paths, normalize=args.normalize)
        manifest["max_abs_diff"] = diffs
        for tower, d in diffs.items():
            print(f"{tower}: max |onnxruntime - torch| = {d:.2e}")
        if max(diffs.values()) > args.atol:
            raise CommandError(f"ONNX and PyTorch differ by up to {max(diffs.values()):.2e}, above --atol {args.atol}; "
                               f"the files are in {out} for inspection")
    written = list(paths.values())
    if args.int8:
        for tower, path in paths.items():
            q = quantize_int8(path, path.with_name(f"{tower}_encoder.int8.onnx"))
            manifest["towers"][tower]["int8_file"] = q.name
            written.append(q)
    (out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for path in [*written, out / "preprocess.json"] + ([out / "tokenizer"] if manifest["tokenizer"] else []):
        print(f"wrote {path}")
    print(f"wrote {out / 'export.json'}")
    return 0


main = command("torchclip export", _export)


if __name__ == "__main__":
    raise SystemExit(main())
