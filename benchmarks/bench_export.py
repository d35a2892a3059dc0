"""ONNX export of ViT-B/32: exactness against PyTorch, and the CPU speed of fp32 vs dynamic int8.

    .venv/bin/python benchmarks/bench_export.py --out benchmarks/results_export.json [--exporter dynamo]

Exports both towers of ``--model`` (random init: speed and exactness do not depend on the weights), checks
ONNX Runtime against eager PyTorch over several batch sizes (max |diff| of the raw features), quantizes
both towers with ONNX Runtime's dynamic int8 quantization, and times, interleaved and repeated (the machine
is shared), images and texts per CPU-second, single-threaded (torch and ONNX Runtime both on one thread: a
per-core figure that other jobs on the machine do not distort), of: PyTorch eager fp32, ORT fp32, ORT int8. The feature change of int8 is
reported as the cosine to the fp32 features; its *accuracy* change needs a trained model: see
``bench_emoji_effects.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from torchclip.embed import ModelSpec
from torchclip.export import OnnxTower, check_onnx, example_ids, export_onnx, quantize_int8, trim_ids

REPO = Path(__file__).resolve().parents[1]


def rate(fn: Callable[[], object], items: int, min_cpu_seconds: float = 2.0) -> float:
    """Items per CPU-second of ``fn`` (one warm-up call, then calls until ``min_cpu_seconds`` of CPU).

    Run single-threaded (see ``main``), CPU time of this process is what the work costs, whatever other
    jobs on the machine do; elapsed time on a shared machine mostly measures the other jobs.
    """
    fn()
    calls, t0 = 0, time.process_time()
    while True:
        fn()
        calls += 1
        used = time.process_time() - t0
        if used >= min_cpu_seconds:
            return calls * items / used


def cosine(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"mean": float(c.mean()), "min": float(c.min())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    p.add_argument("--image-batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--text-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_export.json"))
    args = p.parse_args()

    model = ModelSpec(args.model, random_init=True, seed=0).load_model()
    result: dict = {"model": args.model, "exporter": args.exporter, "threads": 1,
                    "unit": "items per CPU-second, one thread"}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        paths = export_onnx(model, tmp, exporter=args.exporter)
        result["export_seconds"] = round(time.perf_counter() - t0, 1)
        result["max_abs_diff"] = check_onnx(model, paths, batch_sizes=(1, 4, 16))
        t0 = time.perf_counter()
        q = {t: quantize_int8(path, tmp / f"{t}.int8.onnx") for t, path in paths.items()}
        result["quantize_seconds"] = round(time.perf_counter() - t0, 1)
        result["file_mb"] = {f"{t}_{kind}": round(pp.stat().st_size / 2**20, 1)
                             for t in paths for kind, pp in (("fp32", paths[t]), ("int8", q[t]))}
        torch.set_num_threads(1)
        sessions = {("image", "ort_fp32"): OnnxTower(paths["image"], 1), ("image", "ort_int8"): OnnxTower(q["image"], 1),
                    ("text", "ort_fp32"): OnnxTower(paths["text"], 1), ("text", "ort_int8"): OnnxTower(q["text"], 1)}

        r = model.config.vision.image_size
        g = torch.Generator().manual_seed(0)
        ids = example_ids(model, [int(v) for v in torch.randint(3, 20, (args.text_batch,), generator=g)])
        cases: dict[str, dict[str, Callable[[], object]]] = {}
        for b in args.image_batches:
            px = torch.randn(b, 3, r, r, generator=g)
            cases[f"image b={b}"] = {
                "torch_fp32": lambda px=px: model.encode_image(px),
                "ort_fp32": lambda px=px: sessions["image", "ort_fp32"](px),
                "ort_int8": lambda px=px: sessions["image", "ort_int8"](px),
            }
        short = trim_ids(ids, model.config.text.eot_id)  # the batch cut after its longest caption
        cases[f"text b={args.text_batch}"] = {
            "torch_fp32": lambda: model.encode_text(ids),
            "ort_fp32": lambda: sessions["text", "ort_fp32"](short),
            "ort_int8": lambda: sessions["text", "ort_int8"](short),
            "ort_fp32_full77": lambda: sessions["text", "ort_fp32"](ids),
            "ort_int8_full77": lambda: sessions["text", "ort_int8"](ids),
        }
        speeds: dict[str, dict[str, list[float]]] = {c: {k: [] for k in fns} for c, fns in cases.items()}
        with torch.inference_mode():
            for rep in range(args.repeats):
                for case, fns in cases.items():
                    n = int(case.split("b=")[1])
                    for name, fn in fns.items():
                        speeds[case][name].append(rate(fn, n))
                print(f"repeat {rep}: {json.dumps({c: {k: round(v[-1], 1) for k, v in s.items()} for c, s in speeds.items()})}",
                      file=sys.stderr)
        result["items_per_s"] = {c: {k: round(statistics.median(v), 2) for k, v in s.items()} for c, s in speeds.items()}
        result["int8_speedup_vs_ort_fp32"] = {c: round(s["ort_int8"] / s["ort_fp32"], 2)
                                              for c, s in result["items_per_s"].items()}
        result["int8_speedup_vs_torch"] = {c: round(s["ort_int8"] / s["torch_fp32"], 2)
                                           for c, s in result["items_per_s"].items()}
        result["runs"] = speeds
        px = torch.randn(32, 3, r, r, generator=g)
        result["int8_feature_cosine"] = {
            "image": cosine(sessions["image", "ort_fp32"](px), sessions["image", "ort_int8"](px)),
            "text": cosine(sessions["text", "ort_fp32"](short), sessions["text", "ort_int8"](short)),
        }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
