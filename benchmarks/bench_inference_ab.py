"""Paired A/B measurements behind torchclip's CPU inference choices (no peers needed).

Three experiments, each timed in interleaved rounds so that load drifting on a shared machine hits both
sides alike; ratios are medians of per-round ratios:

1. ``gemm``: the 12 layers of ViT-B/32 projections (qkv, proj, fc1, fc2; distinct weights, so they stream
   from memory as in a forward) at a given number of rows, through MKL (``F.linear``) and oneDNN
   (``mkldnn::_linear_pointwise``), in GFLOP/s. It shows where oneDNN wins (few rows) and that at
   3,200 rows (batch 64) the projections alone run at about the matmul ceiling, which bounds any
   fp32 implementation.
2. ``onednn``: the whole ViT-B/32 / RN50 image tower with ``torchclip.layers.ONEDNN`` on and off.
3. ``chunks``: ViT-B/32 at batch 64 in one chunk against the default chunking, with minor page faults.

Command (the project venv is enough):

    .venv/bin/python benchmarks/bench_inference_ab.py --out benchmarks/results_inference_ab.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import torchclip
from torchclip import layers

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # ViT-B/32 projections, (in, out)


def paired(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round, the order alternating between rounds."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in names:
            t = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t)
    return out


def ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """Speed of the first over the second per round (b's time over a's): median and range."""
    r = sorted(tb / ta for ta, tb in zip(a, b))
    return {"median": statistics.median(r), "min": r[0], "max": r[-1]}


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

        t = paired({"mkl": run(F.linear),
                    "onednn": run(lambda x, w, b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""))},
                   rounds)
        res[m] = {k: flops / statistics.median(v) / 1e9 for k, v in t.items()} | {
            "onednn_over_mkl": ratio(t["onednn"], t["mkl"])}
        print(f"gemm rows={m}: MKL {res[m]['mkl']:.0f} GFLOP/s, oneDNN {res[m]['onednn']:.0f} GFLOP/s, "
              f"paired {res[m]['onednn_over_mkl']['median']:.2f}x", flush=True)
    return res


def onednn(model_name: str, batches: list[int], rounds: int) -> dict:
    # One model per side: switching paths on one model would rebuild the ResNet's conv caches each time.
    models = {True: torchclip.create_model(model_name).eval()}
    models[False] = copy.deepcopy(models[True])
    g = torch.Generator().manual_seed(0)
    res = {}
    for b in batches:
        px = torch.randn(b, 3, 224, 224, generator=g)
        reps = max(1, 8 // b)

        def call(on: bool, px: torch.Tensor = px, reps: int = reps) -> Callable[[], None]:
            def go() -> None:
                with layers.onednn_enabled(on):
                    for _ in range(reps):
                        models[on].encode_image(px)
            return go

        with torch.inference_mode():
            t = paired({"on": call(True), "off": call(False)}, rounds)
        res[b] = {"img_s_on": b * reps / statistics.median(t["on"]),
                  "img_s_off": b * reps / statistics.median(t["off"]), "on_over_off": ratio(t["on"], t["off"])}
        r = res[b]["on_over_off"]
        print(f"{model_name} b{b}: oneDNN on/off {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})", flush=True)
    return res


def chunks(rounds: int) -> dict:
    model = torchclip.create_model("ViT-B/32").eval()
    px = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    default = model.visual.chunk_tokens
    faults: dict[str, list[int]] = {"one": [], "default": []}

    def call(tokens: int, key: str) -> Callable[[], None]:
        def go() -> None:
            model.visual.chunk_tokens = tokens
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model.encode_image(px)
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return go

    with torch.inference_mode():
        t = paired({"default": call(default, "default"), "one": call(64 * 50, "one")}, rounds)
    model.visual.chunk_tokens = default
    res = {"chunk_tokens": default, "faults_one_chunk": statistics.median(faults["one"]),
           "faults_default": statistics.median(faults["default"]), "default_over_one": ratio(t["default"], t["one"])}
    print(f"chunks b64: {res['faults_one_chunk']:.0f} faults in one chunk, {res['faults_default']:.0f} in chunks "
          f"of {default} tokens; paired {res['default_over_one']['median']:.2f}x", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="50,100,200,400,1600,3200")
    ap.add_argument("--batches", default="1,2,4,8,32")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(args.threads or cores)
    if not layers.ONEDNN:
        raise SystemExit("oneDNN kernels are off here (not x86, no MKL-DNN, or TORCHCLIP_ONEDNN=0)")
    batches = [int(b) for b in args.batches.split(",")]
    results = {
        "threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": args.rounds,
        "onednn_max_rows": layers.ONEDNN_MAX_ROWS,
        "gemm": gemm([int(m) for m in args.rows.split(",")], args.rounds),
        "vit_b32": onednn("ViT-B/32", batches, args.rounds),
        "rn50": onednn("RN50", [b for b in batches if b <= 8], args.rounds),
        "chunks": chunks(args.rounds),
    }
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
