"""Image encoding throughput with each implementation alone in a fresh process, next to the peers.

``bench_encode.py`` times torchclip, open_clip and HF in one process, where each runs on memory the others
left to glibc's allocator. Whether a large-batch forward page-faults then depends on that history: in one
process a peer's large batch can run without minor faults and in a fresh one fault on every page. A user
runs one library per process, so this script measures that: every round starts one subprocess per
implementation (order rotated), which builds its model (random weights, ``eval()``), makes two untimed
calls and times ``--calls`` calls under ``torch.inference_mode()``, counting minor page faults.

    .bench-venv/bin/python benchmarks/bench_encode_fresh.py --models ViT-B/32,RN50 --batches 1,64 --rounds 5

Reported: images/s (median over rounds of each round's median call), faults per call, and torchclip over
the faster peer, as the ratio of medians and paired per round.

The host's speed drifts by tens of percent from minute to minute, and separate processes cannot alternate
call by call, so each worker also times two fp32 ``torch.mm`` of ``--mm-size`` square matrices right
before and right after every timed call (operands allocated once, before the model, and never freed, so
they do not move glibc's mmap threshold). A call's speed over the mean of its two neighbouring ceilings
is drift-normalized: reported as the share of the ceiling achieved (GFLOP/s over ceiling GFLOP/s, FLOPs
counted per implementation at batch 1, the peers with grad on so that their fused inference ops are counted) and as torchclip over the faster peer in images per ceiling-GFLOP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPLS = ("torchclip", "open_clip", "HF")


def worker(impl: str, model: str, batch: int, calls: int, threads: int, mm_size: int) -> dict:
    """Runs in the subprocess: build one model, time ``calls`` calls between matmul-ceiling measurements;
    report seconds, faults and drift-normalized speed per call."""
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    from harness import count_flops, import_peers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(mm_size, mm_size, generator=gen), torch.randn(mm_size, mm_size, generator=gen)
    c = torch.empty(mm_size, mm_size)

    def ceiling() -> float:  # GFLOP/s of two fp32 matmuls, now
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        torch.mm(a, b, out=c)
        return 4 * mm_size**3 / (time.perf_counter() - t0) / 1e9

    if impl == "torchclip":
        import torchclip

        m = torchclip.create_model(model).eval()
        fn = m.encode_image
    else:
        open_clip, transformers = import_peers()
        if impl == "open_clip":
            m = open_clip.create_model(model.replace("/", "-"), pretrained=None).eval()
            fn = m.encode_image
        else:
            if model != "ViT-B/32":
                raise SystemExit(f"HF has no {model} image tower here")
            hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
            fn = lambda x: hf.get_image_features(pixel_values=x).pooler_output  # noqa: E731
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # The peers' inference fast paths (open_clip's fused attention) hide ops from the counter; with grad on they
    # run (and count) the full maths. torchclip counts what its inference path really computes.
    flops_per_image = count_flops(lambda: fn(x[:1]), plain=impl != "torchclip")
    times, faults, ceilings, per_ceiling = [], [], [], []
    with torch.inference_mode():
        fn(x)
        fn(x)
        ceiling()
        for _ in range(calls):
            before = ceiling()
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            fn(x)
            dt = time.perf_counter() - t0
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            around = (before + ceiling()) / 2
            times.append(dt)
            ceilings.append(around)
            per_ceiling.append(batch / dt / around)  # images per ceiling-GFLOP
    return {"s_per_call": statistics.median(times), "faults_per_call": statistics.median(faults),
            "ceiling_gflops": statistics.median(ceilings), "img_per_ceiling_gflop": statistics.median(per_ceiling),
            "gflop_per_image": flops_per_image / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ViT-B/32,RN50")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=0, help="timed calls per process (0: 20 at batch 1, 3 above 16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--mm-size", type=int, default=2048, help="side of the ceiling matmuls around each call")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or cores
    if args.worker:
        impl, model, batch, calls = json.loads(args.worker)
        print(json.dumps(worker(impl, model, batch, calls, threads, args.mm_size)))
        return

    results: dict[tuple[str, int, str], list[dict]] = {}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for model in [m for m in args.models.split(",") if m]:
            impls = [i for i in IMPLS if not (i == "HF" and model != "ViT-B/32")]
            for batch in [int(b) for b in args.batches.split(",") if b]:
                calls = args.calls or (20 if batch == 1 else 8 if batch <= 16 else 3)
                k = r % len(impls)
                for impl in impls[k:] + impls[:k]:  # rotate who goes first
                    cmd = [sys.executable, __file__, "--threads", str(threads), "--mm-size", str(args.mm_size),
                           "--worker", json.dumps([impl, model, batch, calls])]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        raise SystemExit(f"{impl} {model} b{batch} failed:\n{out.stderr[-2000:]}")
                    results.setdefault((model, batch, impl), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    rows: list[str] = []
    ceil_all: list[float] = []
    for model in [m for m in args.models.split(",") if m]:
        for batch in [int(b) for b in args.batches.split(",") if b]:
            rate = {i: [batch / s["s_per_call"] for s in results[(model, batch, i)]]
                    for i in IMPLS if (model, batch, i) in results}
            flt = {i: statistics.median(s["faults_per_call"] for s in results[(model, batch, i)])
                   for i in rate}
            peers = [i for i in rate if i != "torchclip"]
            med = {i: statistics.median(v) for i, v in rate.items()}
            best_peer = max(med[p] for p in peers)
            paired = sorted(rate["torchclip"][r] / max(rate[p][r] for p in peers) for r in range(args.rounds))
            per_ceil = {i: [s["img_per_ceiling_gflop"] for s in results[(model, batch, i)]] for i in rate}
            share = {i: statistics.median(v * s["gflop_per_image"] for v, s in zip(per_ceil[i], results[(model, batch, i)]))
                     for i in rate}
            normed = sorted(per_ceil["torchclip"][r] / max(per_ceil[p][r] for p in peers) for r in range(args.rounds))
            cells = [model, str(batch)] + [f"{med[i]:.2f}" if i in med else "—" for i in IMPLS]
            cells += [f"{share[i]:.0%}" if i in share else "—" for i in IMPLS]
            cells += [f"{flt[i]:,.0f}" if i in flt else "—" for i in IMPLS]
            cells += [f"{med['torchclip'] / best_peer:.2f}×",
                      f"{statistics.median(paired):.2f}× ({paired[0]:.2f}–{paired[-1]:.2f})",
                      f"**{statistics.median(normed):.2f}×** ({normed[0]:.2f}–{normed[-1]:.2f})"]
            rows.append("| " + " | ".join(cells) + " |")
            ceil_all += [s["ceiling_gflops"] for i in rate for s in results[(model, batch, i)]]
    cmd = "    .bench-venv/bin/python benchmarks/bench_encode_fresh.py" + "".join(f" {a}" for a in sys.argv[1:])
    md = f"""Each implementation alone in a fresh process, {args.rounds} rounds, {threads} threads, \
{(time.perf_counter() - t_start) / 60:.1f} min:

{cmd}

Ceiling ({args.mm_size}×{args.mm_size} fp32 `torch.mm` around each call): median {statistics.median(ceil_all):.0f} \
GFLOP/s, {min(ceil_all):.0f}–{max(ceil_all):.0f} over the processes. Share of ceiling: each call's GFLOP/s over the \
ceiling measured around it (FLOPs per image: each implementation's own). Drift-normalized: torchclip over the \
faster peer in images per ceiling-GFLOP, per round (median, range).

| model | batch | torchclip img/s | open_clip img/s | HF img/s | share of ceiling torchclip | open_clip | HF \
| faults/call torchclip | faults/call open_clip | faults/call HF | vs faster peer | paired, per round \
| drift-normalized, per round |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + "\n"
    print(md)
    if args.out:
        args.out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
