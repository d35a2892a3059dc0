"""Distributed embedding: two single-thread processes (``RANK``/``WORLD_SIZE``, as torchrun sets them) vs one.

The same ``torchclip embed`` command on the same shards (``--shards`` equal shards repacked from the emoji
set, or generated JPEGs), each process with one thread (``OMP_NUM_THREADS=1``) decoding in-process
(``--workers 0``). Measured: wall time from launch to the finished store (start-up and, for the pair, the
merge included), and the embedding loop alone (the time each command reports). Rounds alternate the order.
The pair's store is checked to hold the same ids as the single process's.

    python benchmarks/bench_embed_ranks.py                                  # 2048 emoji images, ViT-B/32
    python benchmarks/bench_embed_ranks.py --n 64 --model cpu-vit-32 --rounds 1    # a smoke run

Prints a markdown table; ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOJI = REPO.parent / "shared" / "data" / "emoji"


def images(n: int) -> list[tuple[str, bytes]]:
    """``n`` (key, image bytes): the emoji train images in file order, else generated JPEG photos."""
    out: list[tuple[str, bytes]] = []
    for shard in sorted(EMOJI.glob("*-train.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isfile() and m.name.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
                    f = tar.extractfile(m)
                    out.append((f"{shard.stem}/{m.name.rsplit('.', 1)[0]}", f.read() if f else b""))
                    if len(out) == n:
                        return out
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    while len(out) < n:
        arr = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append((f"gen/{len(out):06d}", buf.getvalue()))
    return out


def repack(items: list[tuple[str, bytes]], folder: Path, shards: int) -> str:
    per = -(-len(items) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"r-{s:03d}.tar", "w") as tar:
            for i, (_key, data) in enumerate(items[s * per : (s + 1) * per]):
                ext = "png" if data[:4] == b"\x89PNG" else "jpg"
                info = tarfile.TarInfo(f"{s:03d}-{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(folder / f"r-{{000..{shards - 1:03d}}}.tar")


def run(spec: str, out: Path, world: int, model: str, batch: int) -> tuple[float, list[float]]:
    """(wall seconds, per-process loop seconds) of one command on ``world`` processes."""
    cmd = [sys.executable, "-m", "torchclip.cli", "embed", spec, "--model", model, "--random-init", "--workers", "0",
           "--batch-size", str(batch), "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "WORLD_SIZE": str(world)} if world > 1 else env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t
    loops = []
    for p, (so, se) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"embed failed ({p.returncode}): {se[-2000:]}")
        m = re.search(r"items in ([\d.]+)s", so)
        loops.append(float(m.group(1)) if m else float("nan"))
    return wall, loops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2048, help="images (default 2048)")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--model", default="ViT-B/32", help="preset, at random init (default ViT-B/32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the measurements as JSON here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items = images(args.n)
        spec = repack(items, Path(tmp), args.shards)
        for r in range(args.rounds):
            for world in (1, 2) if r % 2 == 0 else (2, 1):
                out = Path(tmp) / f"out-{r}-{world}"
                wall, loops = run(spec, out, world, args.model, args.batch_size)
                rows.append({"round": r, "processes": world, "wall_s": wall, "loop_s": loops})
                print(f"round {r}, {world} process(es): {wall:.1f} s wall, loops {', '.join(f'{x:.1f}' for x in loops)} s",
                      flush=True)
            ids = [json.loads(line)["id"] for line in (Path(tmp) / f"out-{r}-1" / "ids.jsonl").read_text().splitlines()]
            ids2 = [json.loads(line)["id"] for line in (Path(tmp) / f"out-{r}-2" / "ids.jsonl").read_text().splitlines()]
            assert ids == ids2 and len(ids) == len(items), "the two-process store differs from the single one"
    n = len(items)

    def med(world: int, key: str) -> float:
        vals = [x[key] if key == "wall_s" else max(x["loop_s"]) for x in rows if x["processes"] == world]
        return statistics.median(vals)

    w1, w2, l1, l2 = med(1, "wall_s"), med(2, "wall_s"), med(1, "loop_s"), med(2, "loop_s")
    print(f"\n| processes (1 thread each) | images | wall s (median of {args.rounds}) | images/s wall | "
          "embedding loop s (slowest rank) | images/s loop |\n|---|---|---|---|---|---|")
    print(f"| 1 | {n} | {w1:.1f} | {n / w1:.1f} | {l1:.1f} | {n / l1:.1f} |")
    print(f"| 2 | {n} | {w2:.1f} | {n / w2:.1f} | {l2:.1f} | {n / l2:.1f} |")
    print(f"\n2 processes / 1: **{w1 / w2:.2f}x** wall, {l1 / l2:.2f}x loop (target >= 1.7x)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "speedup_wall": w1 / w2, "speedup_loop": l1 / l2}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
