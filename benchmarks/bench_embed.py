"""Embedding throughput: torchclip's pipeline vs OpenCLIP's, and what JPEG draft mode buys and costs.

    .venv/bin/python benchmarks/bench_embed.py --n 1000 --photos /tmp/tc-photos --out benchmarks/results_embed.json

1. Generates ``--n`` realistic-size photos (1600x1200: gradients, shapes, texture, sensor noise; JPEG q90)
   into ``--photos`` (kept for reruns).
2. Decode + preprocess only, one process: exact vs draft decoding (images/s), and how far the draft
   pixels are from the exact ones (mean |diff| of the model-input crops, PSNR).
3. Full pipeline (decode + preprocess + encode, ``--model`` at random init, ``--workers`` decoding
   processes): torchclip exact, torchclip draft, and OpenCLIP with the *same weights* (saved in OpenAI's
   layout and loaded by OpenCLIP) run in ``.bench-venv`` through ``peer_openclip_embed.py``. Runs are
   interleaved and repeated (other jobs share the machine); medians are reported. Same weights also give a
   correctness check: cosine between torchclip's and OpenCLIP's features of every photo.
4. Feature effect of draft mode: cosine between exact and draft features of every photo.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from torchclip.checkpoints import save_openai
from torchclip.embed import ModelSpec, embed_source, load_embeddings, open_source
from torchclip.embed.decode import normalize_batch, open_image, prepare_pixels

REPO = Path(__file__).resolve().parents[1]
PEER_PY = REPO / ".bench-venv" / "bin" / "python"


def make_photo(args: tuple[Path, int, int, int]) -> None:
    """One synthetic photo: smooth colour gradients, blurred shapes, fine texture and sensor noise, so that
    it compresses like a photograph (~0.3-0.6 MB at q90), not like flat colour or white noise."""
    path, seed, w, h = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1, c2 = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = ((np.float32(np.cos(angle) / w) * xx + np.float32(np.sin(angle) / h) * yy + 1) / 2)[..., None]
    base = c0 + (c1 - c0) * t
    base += (c2 - 128) * np.float32(0.3) * np.sin(xx[..., None] / np.float32(rng.uniform(40, 200)))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * (w, h)
        sw, sh = rng.uniform(0.05, 0.4, 2) * (w, h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + sw, y0 + sh)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    small = rng.normal(128, 14, (h // 12, w // 12, 3))
    texture = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, np.float32) + np.asarray(texture, np.float32)
    arr += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(5) - np.float32(128)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def make_photos(folder: Path, n: int, w: int = 1600, h: int = 1200) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(n)]
    todo = [(p, i, w, h) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            pool.map(make_photo, todo, chunksize=8)
        print(f"generated {len(todo)} photos in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return paths


def decode_only(paths: list[Path], size: int, draft: float | None) -> tuple[float, float, list[np.ndarray]]:
    """(images/s, CPU ms per image, crops) of decode + eval geometry in this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    crops = [prepare_pixels(open_image(p, draft_size=size if draft else None, draft_factor=draft or 1.0), size)
             for p in paths]
    return len(paths) / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / len(paths), crops


def pixel_effect(exact: list[np.ndarray], draft: list[np.ndarray]) -> dict[str, float]:
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)) for a, b in zip(exact, draft)]
    mse = float(np.mean([np.mean(d**2) for d in diffs]))
    return {"mean_abs_diff_0_255": float(np.mean([d.mean() for d in diffs])),
            "max_abs_diff_0_255": float(max(d.max() for d in diffs)),
            "psnr_db": float(10 * np.log10(255**2 / mse)) if mse > 0 else float("inf")}


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus reaped children (the joined decoding workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_torchclip(photos: Path, model: torch.nn.Module, batch: int, workers: int, draft: float | None,
                  out: Path) -> dict[str, float]:
    cpu0 = cpu_seconds()
    res = embed_source(open_source([photos]), model, out, batch_size=batch, workers=workers, draft_factor=draft,
                       overwrite=True, progress=False)
    cpu = cpu_seconds() - cpu0
    return {"images_per_s": res.new_items / res.seconds, "cpu_ms_per_image": 1000 * cpu / res.new_items}


def run_peer(photos: Path, weights: Path, batch: int, workers: int, out: Path) -> dict:
    cmd = [str(PEER_PY), str(REPO / "benchmarks" / "peer_openclip_embed.py"), "--photos", str(photos),
           "--weights", str(weights), "--batch-size", str(batch), "--workers", str(workers), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = (a * b).sum(1)
    return {"mean": float(c.mean()), "min": float(c.min()), "p01": float(np.quantile(c, 0.01))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--photos", default=str(Path(tempfile.gettempdir()) / "torchclip-bench-photos"))
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="decoding processes, both pipelines")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--draft", type=float, default=2.0, help="draft factor measured")
    p.add_argument("--decode-n", type=int, default=200, help="photos in the decode-only measurement")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_embed.json"))
    args = p.parse_args()

    photos = Path(args.photos)
    paths = make_photos(photos, args.n)
    spec = ModelSpec(args.model, random_init=True, seed=0)
    model = spec.load_model()
    size = model.config.vision.image_size
    sizes = [p.stat().st_size for p in paths]
    result: dict = {"n": args.n, "photo": "1600x1200 JPEG q90", "mean_file_kb": sum(sizes) / len(sizes) / 1024,
                    "model": args.model, "batch_size": args.batch_size, "workers": args.workers,
                    "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "draft_factor": args.draft}

    # Decode + preprocess only (one process): the part draft mode changes.
    sub = paths[: args.decode_n]
    rates: dict[str, list[float]] = {"exact": [], "draft": [], "draft_factor_1": []}
    cpu: dict[str, list[float]] = {k: [] for k in rates}
    crops: dict[str, list[np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, factor in (("exact", None), ("draft", args.draft), ("draft_factor_1", 1.0)):
            r, c, crops[name] = decode_only(sub, size, factor)
            rates[name].append(r)
            cpu[name].append(c)
    result["decode_only_images_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
    result["decode_only_cpu_ms_per_image"] = {k: statistics.median(v) for k, v in cpu.items()}
    result["decode_only_speedup_cpu"] = {k: cpu["exact"][0] and statistics.median(cpu["exact"]) / statistics.median(v)
                                         for k, v in cpu.items() if k != "exact"}
    result["draft_pixels"] = pixel_effect(crops["exact"], crops["draft"])
    result["draft_factor_1_pixels"] = pixel_effect(crops["exact"], crops["draft_factor_1"])
    with torch.inference_mode():  # feature effect of the more aggressive factor 1, on a subset
        f = {k: model.encode_image(normalize_batch(np.stack(v[:64])), normalize=True).numpy() for k, v in crops.items()}
    result["draft_factor_1_feature_cosine_64"] = cosines(f["exact"], f["draft_factor_1"])
    print(json.dumps(result, indent=2), file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        weights = save_openai(model, tmp / "weights.pt")
        runs: dict[str, list[dict[str, float]]] = {"torchclip": [], "torchclip_draft": [], "open_clip": []}
        peer_info: dict = {}
        for rep in range(args.repeats):
            runs["torchclip"].append(run_torchclip(photos, model, args.batch_size, args.workers, None, tmp / "exact"))
            runs["torchclip_draft"].append(
                run_torchclip(photos, model, args.batch_size, args.workers, args.draft, tmp / "draft"))
            if not args.skip_peer:
                peer_info = run_peer(photos, weights, args.batch_size, args.workers, tmp / "peer.npy")
                runs["open_clip"].append({k: peer_info[k] for k in ("images_per_s", "cpu_ms_per_image")})
            print(f"repeat {rep} ({os.getloadavg()[0]:.1f} load): " + ", ".join(
                f"{k} {v[-1]['images_per_s']:.2f}/s {v[-1]['cpu_ms_per_image']:.0f} cpu-ms/img"
                for k, v in runs.items() if v), file=sys.stderr)
        result["pipeline_images_per_s"] = {k: statistics.median(r["images_per_s"] for r in v)
                                           for k, v in runs.items() if v}
        result["pipeline_cpu_ms_per_image"] = {k: statistics.median(r["cpu_ms_per_image"] for r in v)
                                               for k, v in runs.items() if v}
        result["pipeline_runs"] = runs
        result["load_average_end"] = os.getloadavg()
        exact = load_embeddings(tmp / "exact").vectors
        draft = load_embeddings(tmp / "draft").vectors
        result["draft_feature_cosine"] = cosines(exact, draft)
        if not args.skip_peer:
            result["peer"] = {k: v for k, v in peer_info.items() if k not in ("seconds", "images_per_s")}
            result["torchclip_vs_open_clip_feature_cosine"] = cosines(exact, np.load(tmp / "peer.npy"))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
