"""Training data streamed over local HTTP vs read from local files: samples/s of the same ContrastiveStream.

Both peers run in this one process, alternating order round by round: the same shards, the same DataLoader
workers, decode + augment + tokenize, steady state (the first batch -- worker start-up and the shuffle buffer
fill -- is not timed). The HTTP server is ``python -m http.server`` in its own process on 127.0.0.1.

    python benchmarks/bench_data_http.py                         # the emoji train shards, if ../shared has them
    python benchmarks/bench_data_http.py --synthetic 4x500       # generated shards (4 shards of 500 samples)
    python benchmarks/bench_data_http.py --batches 2 --rounds 1 --synthetic 2x64   # a smoke run

Prints a markdown table (median samples/s of each peer, and HTTP / local); ``--out`` also writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMOJI = REPO.parent / "shared" / "data" / "emoji"


def synthetic_shards(folder: Path, n_shards: int, per_shard: int, size: int = 160) -> list[str]:
    """JPEG shards of noise-and-gradient pictures with captions (decode cost like small photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for s in range(n_shards):
        name = f"syn-{s:03d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(per_shard):
                arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=85)
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"picture {s} {i}, noise, colour".encode())):
                    info = tarfile.TarInfo(f"{s:03d}{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/", timeout=1).read()
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the HTTP server did not start")


def throughput(source: str, workers: int, batches: int, batch_size: int, image_size: int) -> float:
    import torch

    from torchclip.data import CaptionAugment, ContrastiveStream
    from torchclip.tokenizer import Tokenizer

    tok = Tokenizer([], context_length=77)
    s = ContrastiveStream(source, image_size=image_size, tokenizer=tok, batch_size=batch_size, num_workers=workers,
                          shuffle_buffer=1000, caption_augment=CaptionAugment(0.5, True))
    it = iter(torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers,
                                          prefetch_factor=4 if workers else None))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batch_size * batches / (time.perf_counter() - t)
    del it
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="folder of .tar shards (default: the emoji set's *-train.tar)")
    p.add_argument("--synthetic", help="generate NxM shards (N shards of M samples) instead")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the measurements as JSON here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            n, m = (int(x) for x in args.synthetic.lower().split("x"))
            folder, names = Path(tmp), synthetic_shards(Path(tmp), n, m)
        else:
            folder = Path(args.shards) if args.shards else EMOJI
            names = sorted(x.name for x in folder.glob("*-train.tar" if not args.shards else "*.tar"))
            if not names:
                sys.exit(f"no shards in {folder}: pass --shards DIR or --synthetic NxM")
        proc, base = serve(folder)
        try:
            local = "::".join(str(folder / n) for n in names)
            remote = "::".join(f"{base}/{n}" for n in names)
            rows = []
            for r in range(args.rounds):
                order = [("local", local), ("http", remote)]
                for name, src in order if r % 2 == 0 else order[::-1]:
                    rate = throughput(src, args.workers, args.batches, args.batch_size, args.image_size)
                    rows.append({"round": r, "peer": name, "samples_per_s": rate})
                    print(f"round {r} {name}: {rate:.1f} samples/s", flush=True)
        finally:
            proc.kill()
            proc.wait()
    med = {k: statistics.median(x["samples_per_s"] for x in rows if x["peer"] == k) for k in ("local", "http")}
    print(f"\n| source | shards | DataLoader workers | samples/s (median of {args.rounds}) |\n|---|---|---|---|")
    print(f"| local files | {len(names)} | {args.workers} | {med['local']:.1f} |")
    print(f"| local HTTP (127.0.0.1) | {len(names)} | {args.workers} | {med['http']:.1f} |")
    print(f"\nHTTP / local: **{med['http'] / med['local']:.2f}x** (target >= 0.90)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "median": med, "ratio": med["http"] / med["local"],
                                        "cpu_count": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
