"""Encoding throughput, fp32 on CPU: torchclip next to OpenCLIP and HF transformers, in one run.

One command, from the repository root (the first line only once: the peers live in their own, gitignored
venv; pinning torch==2.13.0 keeps pip on the CPU wheel instead of a multi-GB CUDA build):

    python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 open_clip_torch transformers && .bench-venv/bin/pip install -e .
    .bench-venv/bin/python benchmarks/bench_encode.py --out benchmarks/results_encode.md

The script creates nothing but the optional ``--out`` file; it prints the same markdown section.

What it measures, all in the same process and interleaved round by round (so that load from other
processes hits every implementation alike):

* ``encode_image`` at batch 1, 8, 32, 64 (random normal pixels, 224x224) and ``encode_text`` at batch 256
  on real captions (a fixed sample of the ``.txt`` members of ``shared/data/emoji/google-train.tar``,
  falling back to the texts of ``shared/fixtures/tokenizer/cases.jsonl``), tokenized to ``[N, 77]`` with
  zero padding;
* ViT-B/32 and RN50, random weights, ``eval()`` and ``torch.inference_mode()`` for everyone:
  ``torchclip.create_model``, ``open_clip.create_model('ViT-B-32' | 'RN50')`` and HF
  ``CLIPModel(CLIPConfig())`` (whose defaults are ViT-B/32's dimensions; HF has no ResNet CLIP);
* throughput (items/s, the median over rounds; best round alongside), ratios to each peer, and achieved
  GFLOP/s as a share of the fp32 ``torch.mm`` ceiling of large square matrices, measured in the same rounds.

FLOPs (2 per multiply-add) are counted with ``FlopCounterMode`` on torchclip's model with the math SDPA
backend (so attention is counted too), and used for every implementation of the same architecture: the
peers' own kernels hide some of their FLOPs from the counter (the native MHA fast path, fused SDPA).
For ViT images, a peer computes every token in the last block; torchclip's inference forward computes
only the class token there (the only one used, an exact saving), so the peers are credited with the full
count (torchclip's plain forward) and torchclip with its own. For text, a peer computes all 77 positions;
torchclip computes only what its own forward executes on the batch (rows past their end-of-text token are
skipped, an exact saving under the causal mask), counted on that forward.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import statistics
import sys
import tarfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import torchclip

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHCLIP_SHARED", REPO.parent / "shared"))
CONTEXT = 77


def import_peers() -> tuple[types.ModuleType, types.ModuleType]:
    """Import open_clip and transformers, working around PyPI's torchvision on a CPU-only torch.

    Both import torchvision. PyPI's torchvision 0.28 wheel is a CUDA build: under the CPU torch 2.13 wheel
    its ``_C`` extension cannot load, and ``torchvision._meta_registrations`` then raises while registering
    fake kernels for ops that do not exist. Neither peer's CLIP calls a torchvision op, so when (and only
    when) that import fails, torchvision is imported again without those registrations.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    import open_clip
    import transformers

    transformers.logging.set_verbosity_error()
    return open_clip, transformers


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


def tokenize(texts: list[str], open_clip: types.ModuleType) -> tuple[torch.Tensor, str]:
    """[N, 77] ids: torchclip's tokenizer once the package exports it, else OpenCLIP's (OpenAI's ids)."""
    ref = open_clip.tokenize(texts, context_length=CONTEXT)
    try:
        from torchclip import tokenize as tc_tokenize  # type: ignore[attr-defined]

        ids = tc_tokenize(texts, context_length=CONTEXT)
    except Exception:  # not exported yet, or its vocabulary is not available offline
        return ref, "open_clip.tokenize"
    if not torch.equal(ids.long(), ref.long()):
        raise SystemExit("torchclip.tokenize and open_clip.tokenize disagree on the benchmark captions")
    return ids.long(), "torchclip.tokenize (equal to open_clip.tokenize)"


OURS_MKL = "torchclip (MKL GEMM)"


def without_onednn(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    """``fn(x)`` with torchclip's oneDNN projections off: what the same model does on torch's default GEMM."""
    with torchclip.layers.onednn_enabled(False):
        return fn(x)


def count_flops(fn: Callable[[], object], plain: bool = False) -> int:
    """FLOPs of ``fn()``; ``plain``: with autograd on, so torchclip takes none of its inference shortcuts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    mode = torch.enable_grad() if plain else torch.inference_mode()
    with mode, sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def mm_ceiling(n: int) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


@dataclass
class Case:
    name: str  # "ViT-B/32 image", ...
    batch: int
    unit: str  # "img/s" | "text/s" | "GFLOP/s"
    impls: dict[str, Callable[[], object]]
    flops: dict[str, int]  # per call, per implementation
    inner: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds per call
    faults: dict[str, list[float]] = field(default_factory=dict)  # minor page faults per call

    def rate(self, impl: str, how: str = "median") -> float:
        s = self.samples[impl]
        t = statistics.median(s) if how == "median" else min(s)
        return (self.batch if self.unit != "GFLOP/s" else self.flops[impl] / 1e9) / t

    def gflops(self, impl: str, how: str = "median") -> float:
        s = self.samples[impl]
        return self.flops[impl] / 1e9 / (statistics.median(s) if how == "median" else min(s))


def calibrate(case: Case, min_sample_s: float, warmup: int) -> None:
    for impl, fn in case.impls.items():
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        case.inner[impl] = max(1, math.ceil(min_sample_s / max(dt, 1e-9)))
        case.samples[impl] = []
        case.faults[impl] = []


def minor_faults() -> int:
    """This process's minor page faults so far (first touches of freshly mapped memory); 0 without resource."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_round(cases: list[Case], r: int) -> None:
    for case in cases:
        names = list(case.impls)
        k = r % len(names)
        for impl in names[k:] + names[:k]:  # rotate who goes first
            fn, n = case.impls[impl], case.inner[impl]
            f0, t0 = minor_faults(), time.perf_counter()
            for _ in range(n):
                fn()
            case.samples[impl].append((time.perf_counter() - t0) / n)
            case.faults[impl].append((minor_faults() - f0) / n)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ViT-B/32,RN50")
    ap.add_argument("--image-batches", default="1,8,32,64")
    ap.add_argument("--text-batch", type=int, default=256)
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--text-models", default="", help="models whose text tower is timed (default: all of --models)")
    ap.add_argument("--no-image", action="store_true")
    ap.add_argument("--peers", default="open_clip,hf", help="comma list out of open_clip,hf ('' for none)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before the (also untimed) calibration call")
    ap.add_argument("--min-sample-s", type=float, default=0.5, help="repeat fast calls up to this per sample")
    ap.add_argument("--mm-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--out", type=Path, help="also write the markdown section here")
    ap.add_argument("--mkl-baseline", action="store_true",
                    help="also time torchclip with its oneDNN projections off (torch's default MKL GEMM)")
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(args.threads or cores)
    torch.manual_seed(0)
    open_clip, transformers = import_peers()
    peers = [p for p in args.peers.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.image_batches.split(",") if b]
    load_before = os.getloadavg()

    captions, caption_source = load_captions(args.text_batch)
    ids, tokenizer_used = tokenize(captions, open_clip)
    lengths = (ids == 49407).int().argmax(dim=1) + 1

    ceiling = Case(f"torch.mm {args.mm_size}x{args.mm_size} fp32", 1, "GFLOP/s",
                   {"torch.mm": mm_ceiling(args.mm_size)}, {"torch.mm": 2 * args.mm_size**3})
    cases: list[Case] = [ceiling]
    gen = torch.Generator().manual_seed(0)
    for name in models:
        ours = torchclip.create_model(name).eval()
        oc_name = {"ViT-B/32": "ViT-B-32", "RN50": "RN50"}[name]
        impls_img: dict[str, Callable[[torch.Tensor], object]] = {"torchclip": ours.encode_image}
        if args.mkl_baseline:  # its own copy: switching paths on one model would rebuild its conv caches
            ours_mkl = copy.deepcopy(ours)
            impls_img[OURS_MKL] = lambda x, m=ours_mkl: without_onednn(m.encode_image, x)
        impls_txt: dict[str, Callable[[torch.Tensor], object]] = {"torchclip": ours.encode_text}
        if "open_clip" in peers:
            oc = open_clip.create_model(oc_name, pretrained=None).eval()
            impls_img["open_clip"] = oc.encode_image
            impls_txt["open_clip"] = oc.encode_text
        if "hf" in peers and not ours.config.vision.is_resnet:
            hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
            impls_img["HF"] = lambda x, hf=hf: hf.get_image_features(pixel_values=x).pooler_output
            impls_txt["HF"] = lambda t, hf=hf: hf.get_text_features(input_ids=t).pooler_output
        if not args.no_image:
            for b in batches:
                px = torch.randn(b, 3, 224, 224, generator=gen)
                # torchclip's inference forward runs its last ViT block for the class token only; the
                # peers compute every token, which is what torchclip's plain (autograd) forward counts.
                f_ours = count_flops(lambda m=ours, px=px: m.encode_image(px))
                f_full = count_flops(lambda m=ours, px=px: m.encode_image(px), plain=True)
                cases.append(Case(f"{name} image", b, "img/s",
                                  {k: (lambda fn=fn, px=px: fn(px)) for k, fn in impls_img.items()},
                                  {k: (f_ours if k.startswith("torchclip") else f_full) for k in impls_img}))
        if not args.no_text and name in (args.text_models.split(",") if args.text_models else models):
            dense = torch.ones_like(ids)  # every row 77 tokens long: what the peers compute
            dense[:, 0], dense[:, -1] = 49406, 49407
            f_dense = count_flops(lambda m=ours, t=dense: m.encode_text(t))
            f_ours = count_flops(lambda m=ours: m.encode_text(ids))
            cases.append(Case(f"{name} text", len(ids), "text/s",
                              {k: (lambda fn=fn: fn(ids)) for k, fn in impls_txt.items()},
                              {k: (f_ours if k == "torchclip" else f_dense) for k in impls_txt}))

    t_start = time.perf_counter()
    with torch.inference_mode():
        for case in cases:
            calibrate(case, args.min_sample_s, args.warmup)
        for r in range(args.rounds):
            run_round(cases, r)
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - t_start
    load_after = os.getloadavg()

    peak = ceiling.gflops("torch.mm")
    peak_best = ceiling.gflops("torch.mm", "best")
    rows: list[str] = []
    mkl_rows: list[str] = []
    fault_rows: list[str] = []
    for case in cases[1:]:
        impls = [k for k in case.impls if k != OURS_MKL]
        ours_rate = case.rate("torchclip")
        fast_peer = max((case.rate(p) for p in impls[1:]), default=float("nan"))
        if OURS_MKL in case.impls:
            mkl_rows.append(f"| {case.name} | {case.batch} | {ours_rate:.2f} | {case.rate(OURS_MKL):.2f} | "
                            f"{ours_rate / case.rate(OURS_MKL):.2f}× | "
                            + (f"{case.rate(OURS_MKL) / fast_peer:.2f}× |" if len(impls) > 1 else "— |"))
        cells = [case.name, str(case.batch)]
        for impl in ("torchclip", "open_clip", "HF"):
            if impl in case.impls:
                cells.append(f"{case.rate(impl):.2f} ({case.rate(impl, 'best'):.2f})")
            else:
                cells.append("—")
        for impl in ("open_clip", "HF"):
            cells.append(f"{ours_rate / case.rate(impl):.2f}×" if impl in case.impls else "—")
        cells.append(f"{ours_rate / fast_peer:.2f}×" if len(impls) > 1 else "—")
        if len(impls) > 1:  # per round: torchclip against the faster peer of that same round
            paired = sorted(min(case.samples[p][r] for p in impls[1:]) / case.samples["torchclip"][r]
                            for r in range(len(case.samples["torchclip"])))
            cells.append(f"{statistics.median(paired):.2f}× ({paired[0]:.2f}–{paired[-1]:.2f})")
        else:
            cells.append("—")
        for impl in ("torchclip", "open_clip", "HF"):
            if impl in case.impls:
                g = case.gflops(impl)
                cells.append(f"{g:.0f} ({100 * g / peak:.0f}%)")
            else:
                cells.append("—")
        rows.append("| " + " | ".join(cells) + " |")
        fault_rows.append(f"| {case.name} | {case.batch} | " + " | ".join(
            f"{statistics.median(case.faults[i]):,.0f}" if i in case.impls else "—"
            for i in ("torchclip", "open_clip", "HF")) + " |")

    cmd = "    .bench-venv/bin/python benchmarks/bench_encode.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    text_note = (f"Text: {len(ids)} captions sampled (seed 0) from the {caption_source}, tokenized with "
                 f"{tokenizer_used} to [{len(ids)}, {CONTEXT}]; tokens up to end-of-text per caption: mean "
                 f"{lengths.float().mean():.1f}, median {lengths.median().item()}, max {lengths.max().item()}.")
    flop_lines = []
    for case in cases[1:]:
        per_item = {k: v / case.batch / 1e9 for k, v in case.flops.items()}
        uniq = sorted(set(round(v, 3) for v in per_item.values()))
        if len(uniq) == 1:
            flop_lines.append(f"{case.name} b{case.batch}: {uniq[0]:.3f} GFLOP/item")
        else:
            flop_lines.append(f"{case.name} b{case.batch}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in per_item.items()) + " GFLOP/item")
    md = f"""## Encoding throughput (CPU, fp32)

Machine: {cpu_name()}, {cores} cores ({platform.machine()}), torch {torch.__version__} with {torch.get_num_threads()} \
threads, Python {platform.python_version()}; open_clip {open_clip.__version__}, transformers \
{transformers.__version__}. Load average (1/5/15 min) before: {load_before[0]:.2f}/{load_before[1]:.2f}/\
{load_before[2]:.2f}, after: {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} \
(other processes share these cores). {args.rounds} interleaved rounds after {args.warmup + 1} untimed warm-up calls per implementation, \
{elapsed / 60:.1f} min.

Command (setup of `.bench-venv` at the top of the script):

{cmd}

fp32 matmul ceiling (`torch.mm`, {args.mm_size}×{args.mm_size}, same rounds): **{peak:.0f} GFLOP/s** median, \
{peak_best:.0f} best.

Throughput: items/s, median over rounds (best round in brackets). Ratios: torchclip's median over each \
peer's. "Paired, per round": torchclip over the faster peer of the same round, median (range) over rounds;
it cancels load that drifts between rounds. GFLOP/s: achieved, median (share of the median matmul ceiling).

| workload | batch | torchclip | open_clip | HF | vs open_clip | vs HF | vs faster peer | paired, per round | \
GFLOP/s torchclip | GFLOP/s open_clip | GFLOP/s HF |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

{text_note}

FLOPs per item (2 per multiply-add, counted on torchclip's model, attention included): {"; ".join(flop_lines)}.

Minor page faults per call, median over rounds: first touches of memory the allocator freshly mapped.
glibc maps every block above its mmap threshold (at most 32 MiB) anew and unmaps it on free, so a
forward whose activations exceed that faults on every page of them each call.

| workload | batch | torchclip | open_clip | HF |
|---|---:|---:|---:|---:|
""" + "\n".join(fault_rows) + """
"""
    if mkl_rows:
        md += """
torchclip's projections through oneDNN (the default on x86) against the same model with
`torchclip.layers.ONEDNN = False` (torch's default GEMM, MKL), timed in the same rounds:

| workload | batch | torchclip (oneDNN) | torchclip (MKL) | oneDNN / MKL | MKL path vs faster peer |
|---|---:|---:|---:|---:|---:|
""" + "\n".join(mkl_rows) + "\n"
    print(md)
    if args.out:
        args.out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
