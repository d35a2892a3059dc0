"""Encoding throughput, fp32 on CPU: torchclip next to OpenCLIP and HF transformers, in one process.

One command, from the repository root (the peers live in their own venv; pinning torch==2.13.0 keeps pip
on the CPU wheel):

    python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 open_clip_torch transformers && .bench-venv/bin/pip install -e .
    .bench-venv/bin/python benchmarks/bench_encode.py --out benchmarks/results_encode.md

What it measures, interleaved round by round (``harness.py``):

* ``encode_image`` at batch 1, 8, 32, 64 (random normal pixels, 224x224) and ``encode_text`` at batch 256
  on real captions (a fixed sample of the ``.txt`` members of ``shared/data/emoji/google-train.tar``,
  falling back to the texts of ``shared/fixtures/tokenizer/cases.jsonl``), tokenized to ``[N, 77]``;
* ViT-B/32 and RN50, random weights, ``eval()`` and ``torch.inference_mode()`` for everyone:
  ``torchclip.create_model``, ``open_clip.create_model('ViT-B-32' | 'RN50')`` and HF ``CLIPModel(CLIPConfig())``
  (ViT-B/32's shapes; HF has no ResNet CLIP); ``--reference`` adds torchclip's reference path and
  ``--mkl-baseline`` its fast path on torch's default GEMM instead of oneDNN;
* throughput (items/s, the median over rounds; best round alongside), ratios to each peer, and achieved
  GFLOP/s as a share of the fp32 ``torch.mm`` ceiling measured in the same rounds.

FLOPs are counted on torchclip's model (``harness.count_flops``) and used for every implementation of the
same architecture. A peer computes every token in the ViT's last block and all 77 text positions; torchclip's
fast path computes the class token only there and skips text positions after each caption's end (exact
savings), so the peers and the reference path are credited with the full count and the fast path with
its own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import statistics
import tarfile
from collections.abc import Callable
from pathlib import Path

import harness
import torch

import torchclip
from torchclip import fast

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHCLIP_SHARED", REPO.parent / "shared"))
CONTEXT = 77
OURS, REF, MKL = "torchclip", "torchclip reference", "torchclip (MKL GEMM)"


def load_captions(n: int, seed: int = 0) -> tuple[list[str], str]:
    tar = SHARED / "data/emoji/google-train.tar"
    if tar.exists():
        with tarfile.open(tar) as tf:
            texts = [tf.extractfile(m).read().decode("utf-8").strip() for m in tf.getmembers()
                     if m.name.endswith(".txt")]
        source = f"{len(texts)} captions of {tar.relative_to(SHARED.parent)}"
    else:
        cases = SHARED / "fixtures/tokenizer/cases.jsonl"
        if not cases.exists():
            raise SystemExit(f"no captions: neither {tar} nor {cases} exists (set TORCHCLIP_SHARED)")
        texts = [json.loads(line)["text"] for line in cases.read_text("utf-8").splitlines() if line.strip()]
        source = f"{len(texts)} texts of {cases.relative_to(SHARED.parent)}"
    rng = random.Random(seed)
    return rng.sample(texts, n) if len(texts) >= n else rng.choices(texts, k=n), source


def tokenize(texts: list[str]) -> tuple[torch.Tensor, str]:
    """[N, 77] ids from torchclip's tokenizer: OpenAI's vocabulary from the cache, else the shared fixtures."""
    from torchclip.tokenizer import load_tokenizer

    try:
        tok, source = load_tokenizer(), "the cached OpenAI vocabulary"
    except Exception:  # offline with an empty cache
        vocab = SHARED / "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
        if not vocab.exists():
            raise SystemExit(f"no BPE vocabulary: neither in the cache nor at {vocab}") from None
        tok, source = load_tokenizer(vocab), str(vocab.relative_to(SHARED.parent))
    return tok(texts, context_length=CONTEXT).long(), f"torchclip's tokenizer on {source}"


def within(context: Callable[[], contextlib.AbstractContextManager],
           fn: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], object]:
    def run(x: torch.Tensor) -> object:
        with context():
            return fn(x)
    return run


def variants(model: torchclip.CLIP, encode: str, args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], object]]:
    """torchclip's implementations to time: the default, and the reference / MKL paths if asked (each on
    its own copy: switching paths on one model would rebuild its caches every call)."""
    out: dict[str, Callable[[torch.Tensor], object]] = {OURS: getattr(model, encode)}
    if args.reference:
        out[REF] = within(fast.plain_ops, getattr(copy.deepcopy(model), encode))
    if args.mkl_baseline:
        out[MKL] = within(lambda: fast.onednn_enabled(False), getattr(copy.deepcopy(model), encode))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ViT-B/32,RN50")
    ap.add_argument("--image-batches", default="1,8,32,64")
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--text-models", default="", help="models whose text tower is timed (default: all of --models)")
    ap.add_argument("--no-image", action="store_true")
    ap.add_argument("--peers", default="open_clip,hf", help="comma list out of open_clip,hf ('' for none)")
    ap.add_argument("--reference", action="store_true", help="also time torchclip's reference path")
    ap.add_argument("--mkl-baseline", action="store_true", help="also time the fast path on torch's default GEMM")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before the (also untimed) calibration call")
    ap.add_argument("--min-sample-s", type=float, default=0.5, help="repeat fast calls up to this per sample")
    ap.add_argument("--mm-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--out", type=Path, help="also write the markdown section here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads or harness.cores())
    torch.manual_seed(0)
    peers = [p for p in args.peers.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.image_batches.split(",") if b]
    header = harness.machine()

    captions, caption_source = load_captions(args.text_batch)
    ids, tokenizer_used = tokenize(captions)
    lengths = (ids == 49407).int().argmax(dim=1) + 1

    ceiling = harness.Case(f"torch.mm {args.mm_size}x{args.mm_size} fp32", 1, "GFLOP/s",
                           {"torch.mm": harness.mm_ceiling(args.mm_size)}, {"torch.mm": 2 * args.mm_size**3})
    cases: list[harness.Case] = [ceiling]
    gen = torch.Generator().manual_seed(0)
    for name in models:
        ours = torchclip.create_model(name).eval()
        size = ours.config.vision.image_size
        if not args.no_image:
            impls = variants(ours, "encode_image", args) | harness.peer_image_encoders(name, peers)
            for b in batches:
                px = torch.randn(b, 3, size, size, generator=gen)
                f_fast = harness.count_flops(lambda m=ours, px=px: m.encode_image(px))
                f_full = harness.count_flops(lambda m=ours, px=px: m.encode_image(px), plain=True)  # = reference
                cases.append(harness.Case(f"{name} image", b, "img/s",
                                          {k: (lambda fn=fn, px=px: fn(px)) for k, fn in impls.items()},
                                          {k: f_fast if k in (OURS, MKL) else f_full for k in impls}))
        if not args.no_text and name in (args.text_models.split(",") if args.text_models else models):
            impls = variants(ours, "encode_text", args) | harness.peer_text_encoders(name, peers)
            dense = torch.ones_like(ids)  # every row 77 tokens long: what the peers compute
            dense[:, 0], dense[:, -1] = 49406, 49407
            f_dense = harness.count_flops(lambda m=ours, t=dense: m.encode_text(t))
            f_fast = harness.count_flops(lambda m=ours: m.encode_text(ids))
            f_ref = harness.count_flops(lambda m=ours: m.encode_text(ids), plain=True)  # trimmed, not packed
            cases.append(harness.Case(f"{name} text", len(ids), "text/s", {k: (lambda fn=fn: fn(ids)) for k, fn in impls.items()},
                                      {k: {OURS: f_fast, MKL: f_fast, REF: f_ref}.get(k, f_dense) for k in impls}))

    with torch.inference_mode():
        elapsed = harness.run(cases, args.rounds, args.warmup, args.min_sample_s)

    peak = ceiling.gflops("torch.mm")
    names = [OURS] + [k for k in (REF, MKL) if any(k in c.impls for c in cases)] + ["open_clip", "HF"]
    rows, fault_rows = [], []
    for case in cases[1:]:
        peer_keys = [k for k in ("open_clip", "HF") if k in case.impls]
        cells = [case.name, str(case.batch)]
        cells += [f"{case.rate(k):.2f} ({case.rate(k, 'best'):.2f})" if k in case.impls else "—" for k in names]
        if peer_keys:
            best = max(case.rate(p) for p in peer_keys)
            cells += [f"{case.rate(OURS) / best:.2f}×", harness.ratio_cell(case.paired(OURS, peer_keys))]
        else:
            cells += ["—", "—"]
        cells += [f"{case.gflops(k):.0f} ({100 * case.gflops(k) / peak:.0f}%)" if k in case.impls else "—"
                  for k in names]
        rows.append("| " + " | ".join(cells) + " |")
        fault_rows.append(f"| {case.name} | {case.batch} | " + " | ".join(
            f"{statistics.median(case.faults[k]):,.0f}" if k in case.impls else "—" for k in names) + " |")
    head = " | ".join(names)
    flops = "; ".join(f"{c.name} b{c.batch}: " + ", ".join(f"{k} {v / c.batch / 1e9:.3f}" for k, v in c.flops.items())
                      for c in cases[1:])
    md = f"""## Encoding throughput (CPU, fp32)

{header}; {args.rounds} interleaved rounds after {args.warmup + 1} untimed calls per implementation, \
{elapsed / 60:.1f} min. fp32 matmul ceiling (`torch.mm` {args.mm_size}², same rounds): **{peak:.0f} GFLOP/s**.

{harness.command("bench_encode.py")}

Items/s, median over rounds (best round). "vs faster peer": torchclip's median over the faster peer's;
"paired": torchclip over the faster peer of the same round, median (range). GFLOP/s: achieved (share of
the ceiling).

| workload | batch | {head} | vs faster peer | paired | {" | ".join(f"GFLOP/s {n}" for n in names)} |
|---|---:|{"---:|" * len(names)}---:|---:|{"---:|" * len(names)}
""" + "\n".join(rows) + f"""

Text: {len(ids)} captions sampled (seed 0) from the {caption_source}, tokenized with {tokenizer_used}; tokens up to end-of-text per caption:
mean {lengths.float().mean():.1f}, median {lengths.median().item()}, max {lengths.max().item()}.
GFLOP per item: {flops}.

Minor page faults per call (median over rounds): first touches of memory the allocator freshly mapped.

| workload | batch | {head} |
|---|---:|{"---:|" * len(names)}
""" + "\n".join(fault_rows) + "\n"
    print(md)
    if args.out:
        args.out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
