"""Hostile inputs, before and after: wall time and peak memory of each case, old code path vs current.

One command, from the repository root:

    .venv/bin/python benchmarks/bench_hostile.py --out benchmarks/results_hostile.md

Each case runs in a fresh child process (peak memory = the child's ``ru_maxrss``, which includes the
imports, reported separately). The old paths are the code as it was (the full shorter-side resize before the
crop; OpenAI's rescanning BPE; Pillow's own pixel check only), run under an address-space cap
(``--old-cap-gib``) and a time limit (``--old-timeout``) so a blow-up cannot take the machine down: a case
that hits them is reported as such rather than measured to the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import io, json, resource, struct, sys, time, zlib
import numpy as np
from PIL import Image
import torchclip.transforms as T
from torchclip.tokenizer import Tokenizer
case, variant, cap, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def strip(w, h):
    buf = io.BytesIO(); Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG"); return buf.getvalue()

def bomb(w, h):  # every row present (all black), compressed row by row: a few hundred KB
    def chunk(k, d): return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    z, row = zlib.compressobj(9), bytes(1 + 3 * w)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

def old_geometry(img, size):
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return T.center_crop(img.resize(new, Image.Resampling.BICUBIC), size)

def old_bpe(tok, word):
    s = [tok.byte_encoder[b] for b in word.encode()]; s[-1] += "</w>"; ranks = tok.bpe_ranks
    while len(s) > 1:
        best = min(set(zip(s, s[1:])), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks: break
        out, i = [], 0
        while i < len(s):
            if i < len(s) - 1 and (s[i], s[i + 1]) == best: out.append(best[0] + best[1]); i += 2
            else: out.append(s[i]); i += 1
        s = out
    return s

tok = Tokenizer.from_file(vocab) if case.startswith("word") else None
word = "".join(chr(97 + int(i)) for i in np.random.default_rng(0).integers(0, 26, 40_000))
data = {"strip": strip(1, 20000), "bomb": bomb(10_000, 10_000) if case.startswith("bomb") else b""}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if variant == "old":
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap, vm + cap))
t = time.perf_counter()
try:
    if case == "strip-224":
        img = T.load_image(data["strip"])
        out = T.image_transform(224)(img) if variant == "new" else old_geometry(img, 224)
    elif case == "bomb-1e8":
        if variant == "new":
            try: T.load_image(data["bomb"])
            except T.ImageDecodeError: pass
        else:
            Image.open(io.BytesIO(data["bomb"])).load()  # Pillow alone: a warning, then the whole canvas
    elif case == "word-40k":
        if variant == "new": tok([word], truncate=True)
        else: old_bpe(tok, word)
    result = "done"
except MemoryError:
    result = "MemoryError"
print(json.dumps({"seconds": time.perf_counter() - t, "result": result, "base_kb": base,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

CASES = {
    "strip-224": "1x20000 PNG (157 bytes) through image_transform(224)",
    "bomb-1e8": "10,000 x 10,000 black RGB PNG (~300 KB), loaded",
    "word-40k": "one 40,000-letter word, tokenize(truncate=True)",
}


def run(case: str, variant: str, cap: int, vocab: str, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, case, variant, str(cap), vocab], capture_output=True,
                           text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
                                                            "PATH": "/usr/bin:/bin", **_pythonpath()})
    except subprocess.TimeoutExpired:
        return {"result": f"not done after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"result": f"failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


def fmt(r: dict) -> str:
    if "seconds" not in r:
        return f"{r['result']} | - | -"
    extra_mb = (r["peak_kb"] - r["base_kb"]) / 1024
    note = "" if r["result"] == "done" else f" ({r['result']})"
    return f"{r['seconds']:.3f} s{note} | {extra_mb:,.0f} MB | {r['peak_kb'] / 1024:,.0f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description="hostile inputs, old vs current code paths (see the docstring)")
    ap.add_argument("--vocab", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures/tokenizer/"
                                          "bpe_simple_vocab_16e6.txt.gz"), help="OpenAI's merges file")
    ap.add_argument("--old-cap-gib", type=float, default=6.0, help="address space allowed to the old paths")
    ap.add_argument("--old-timeout", type=float, default=180.0, help="seconds allowed to the old paths")
    ap.add_argument("--out", type=Path, help="write the markdown section to this file")
    args = ap.parse_args()
    cap = int(args.old_cap_gib * (1 << 30))
    lines = ["| case | path | time | memory above imports | peak RSS |", "| --- | --- | --- | --- | --- |"]
    for case, what in CASES.items():
        for variant in ("old", "new"):
            r = run(case, variant, cap, args.vocab, args.old_timeout if variant == "old" else 120.0)
            lines.append(f"| {what} | {variant} | {fmt(r)} |")
            print(lines[-1], flush=True)
    load = " / ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    text = "\n".join([
        "## Hostile inputs (issue #21)", "",
        "    .venv/bin/python benchmarks/bench_hostile.py --out benchmarks/results_hostile.md", "",
        *lines, "",
        f"Old paths capped at {args.old_cap_gib:g} GiB of address space and {args.old_timeout:.0f} s. "
        f"Machine: {platform.machine()}, Python {platform.python_version()}, load average {load}. "
        f"{time.strftime('%Y-%m-%d')}.", ""])
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
