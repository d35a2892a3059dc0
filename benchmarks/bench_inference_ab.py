"""Paired A/B measurements behind torchclip's fast path (no peers needed): what each switchable piece is
worth, so that a piece stays only where it pays.

1. ``gemm``: the 12 layers of ViT-B/32 projections (qkv, proj, fc1, fc2; distinct weights, so they stream
   from memory as in a forward) at a given number of rows, through torch's GEMM (``F.linear``) and oneDNN
   (``mkldnn::_linear_pointwise``), in GFLOP/s.
2. ``ablate``: the whole fast path against itself with one piece switched off (oneDNN kernels, the
   ResNet's per-shape conv packs, packed text rows) and against the reference path, ViT-B/32 and RN50
   images and ViT-B/32 text, in interleaved rounds (``harness.py``), with minor page faults per call.

    .venv/bin/python benchmarks/bench_inference_ab.py --out benchmarks/results_inference_ab.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import harness
import torch
import torch.nn.functional as F

import torchclip
from torchclip import fast
from torchclip.fast import kernels
from torchclip.fast import text as fast_text
from torchclip.fast import vision as fast_vision

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # ViT-B/32 projections, (in, out)


@contextlib.contextmanager
def setting(module: object, name: str, value: object) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


# Each piece and the switch that turns it off.
PIECES: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "no oneDNN": lambda: fast.onednn_enabled(False),
    "no conv packs": lambda: setting(fast_vision, "PACK_CONVS", False),
    "no packed text rows": lambda: setting(fast_text, "PACK_MIN_PADDING", 2.0),
    "reference path": fast.plain_ops,
}


def gemm(rows: list[int], rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    weights = [[(torch.randn(n, k, generator=g) * 0.02, torch.randn(n, generator=g)) for k, n in SHAPES]
               for _ in range(12)]
    res = {}
    for m in rows:
        xs = {k: torch.randn(m, k, generator=g) for k in (768, 3072)}
        flops = 12 * sum(2 * m * k * n for k, n in SHAPES)

        def run(op: Callable, xs: dict[int, torch.Tensor] = xs) -> Callable[[], None]:
            def go() -> None:
                for layer in weights:
                    for (w, b), (k, _) in zip(layer, SHAPES):
                        op(xs[k], w, b)
            return go

        case = harness.Case(f"gemm rows={m}", m, "GFLOP/s", {
            "mkl": run(F.linear),
            "onednn": run(lambda x, w, b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""))},
            {"mkl": flops, "onednn": flops})
        harness.run([case], rounds, min_sample_s=0.2)
        res[m] = {k: case.gflops(k) for k in case.impls} | {"onednn_over_mkl": case.paired("onednn", ["mkl"])}
        print(f"gemm rows={m}: MKL {res[m]['mkl']:.0f} GFLOP/s, oneDNN {res[m]['onednn']:.0f} GFLOP/s, paired "
              f"{harness.ratio_cell(res[m]['onednn_over_mkl'])}", flush=True)
    return res


def _off(model: torchclip.CLIP, piece: str, what: str, x: torch.Tensor) -> object:
    with PIECES[piece]():
        return getattr(model, f"encode_{what}")(x)


def ablate(name: str, what: str, batch: int, pieces: list[str], rounds: int) -> dict:
    """The fast path, and the fast path with each of ``pieces`` off (each on its own copy of the model:
    switching on one model would rebuild its caches every call), paired per round."""
    model = torchclip.create_model(name).eval()
    g = torch.Generator().manual_seed(0)
    if what == "image":
        size = model.config.vision.image_size
        x = torch.randn(batch, 3, size, size, generator=g)
    else:
        x = torch.randint(1, 49000, (batch, 77), generator=g)
        x[torch.arange(batch), torch.randint(2, 40, (batch,), generator=g)] = 49407
    impls = {"fast path": lambda m=model: getattr(m, f"encode_{what}")(x)}
    for piece in pieces:
        copied = copy.deepcopy(model)
        impls[piece] = lambda m=copied, piece=piece: _off(m, piece, what, x)
    case = harness.Case(f"{name} {what}", batch, "items/s", impls)
    with torch.inference_mode():
        harness.run([case], rounds)
    res = {k: {"items_s": case.rate(k), "faults_per_call": statistics.median(case.faults[k]),
               "fast_over_this": case.paired("fast path", [k]) if k != "fast path" else None} for k in impls}
    for k in pieces:
        print(f"{name} {what} b{batch}: fast path over '{k}' {harness.ratio_cell(res[k]['fast_over_this'])}, "
              f"faults/call {res['fast path']['faults_per_call']:,.0f} vs {res[k]['faults_per_call']:,.0f}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="50,100,200,400,1600,3200")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--models", default="ViT-B/32,RN50")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or harness.cores())
    if not kernels.ONEDNN:
        raise SystemExit("oneDNN kernels are off here (not x86, no MKL-DNN, or TORCHCLIP_ONEDNN=0)")
    results: dict = {"machine": harness.machine(), "rounds": args.rounds,
                     "gemm": gemm([int(m) for m in args.rows.split(",") if m], args.rounds)}
    for name in [m for m in args.models.split(",") if m]:
        pieces = ["no oneDNN", *([] if name.startswith("ViT") else ["no conv packs"]), "reference path"]
        for b in [int(b) for b in args.batches.split(",") if b]:
            results[f"{name} image b{b}"] = ablate(name, "image", b, pieces, args.rounds)
    results[f"ViT-B/32 text b{args.text_batch}"] = ablate(
        "ViT-B/32", "text", args.text_batch, ["no oneDNN", "no packed text rows", "reference path"], args.rounds)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
