"""The library alternative to the hand-written fast path: ``torch.compile`` of torchclip's reference image
tower (Inductor with ``freezing``, which folds the weights into the graph as constants and prepacks them
for oneDNN), start-up included, next to the fast path, the reference path and the peers, in one process.

    .bench-venv/bin/python benchmarks/bench_compile.py --out benchmarks/results_compile.md

For each model (ViT-B/32, RN50) and batch size (1, 8, 64): every implementation is built fresh and its
first call timed (start-up: Inductor's compilation for the compiled tower, cold, in a fresh cache
directory; the first forward, with the ResNet's BatchNorm folding and conv packing, for the fast path),
then the implementations are timed in interleaved rounds (``harness.py``). A compiled graph is specialised to its batch size
(``dynamic=False``), so each batch size compiles its own. Everything runs under ``torch.no_grad()``
(freezing applies to inference graphs only). Reported: start-up seconds, images/s, and how many images
a run must encode before the compiled tower's total time (start-up included) drops below the fast path's.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="torchclip-inductor-"))  # cold compiles

import harness  # noqa: E402
import torch  # noqa: E402

import torchclip  # noqa: E402
from torchclip import fast  # noqa: E402

FAST, REF, COMPILED = "torchclip fast path", "torchclip reference", "torch.compile(reference)"


def compiled_tower(model: torchclip.CLIP, mode: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch._inductor.config as inductor

    inductor.freezing = True  # weights become constants: folded, and prepacked for oneDNN on CPU
    inductor.fx_graph_cache = False  # compile from scratch: start-up is what a first run pays
    torch._dynamo.config.cache_size_limit = 64
    return torch.compile(copy.deepcopy(model.visual).eval(), backend="inductor", mode=mode, dynamic=False)


def implementations(name: str, args: argparse.Namespace) -> dict[str, Callable[[], Callable[[torch.Tensor], object]]]:
    """Builders: each returns a fresh implementation, so that its first call pays its full start-up."""
    base = torchclip.create_model(name).eval()

    def fast_path() -> Callable[[torch.Tensor], object]:
        return copy.deepcopy(base).encode_image  # a copy holds no folded or packed weights yet

    def reference() -> Callable[[torch.Tensor], object]:
        model = copy.deepcopy(base)

        def run(x: torch.Tensor) -> object:
            with fast.plain_ops():
                return model.encode_image(x)
        return run

    out = {FAST: fast_path, REF: reference, COMPILED: lambda: compiled_tower(base, args.mode)}
    peers = [p for p in args.peers.split(",") if p]
    for peer in harness.peer_image_encoders(name, peers):  # builds once to learn the names
        out[peer] = lambda peer=peer: harness.peer_image_encoders(name, [peer.lower()])[peer]
    if args.compile_peers:
        for peer in [k for k in out if k not in (FAST, REF, COMPILED)]:
            out[f"torch.compile({peer})"] = lambda build=out[peer]: torch.compile(build(), dynamic=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ViT-B/32,RN50")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--peers", default="open_clip,hf", help="comma list out of open_clip,hf ('' for none)")
    ap.add_argument("--compile-peers", action="store_true", help="also time torch.compile of the peers' models")
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: Inductor's default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-sample-s", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core this process may use)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or harness.cores())
    header = harness.machine()
    rows: list[str] = []
    t_start = time.perf_counter()
    for name in [m for m in args.models.split(",") if m]:
        builders = implementations(name, args)
        size = torchclip.create_model(name).config.vision.image_size
        for b in [int(x) for x in args.batches.split(",") if x]:
            px = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0))
            impls, startup = {}, {}
            with torch.no_grad():
                for key, build in builders.items():
                    t0 = time.perf_counter()
                    fn = build()
                    t1 = time.perf_counter()
                    fn(px)
                    startup[key] = time.perf_counter() - t1  # the first call, after building the model
                    print(f"{name} b{b} {key}: built in {t1 - t0:.1f} s, first call {startup[key]:.1f} s",
                          file=sys.stderr, flush=True)
                    impls[key] = lambda fn=fn, px=px: fn(px)
                case = harness.Case(f"{name} image", b, "img/s", impls)
                harness.run([case], args.rounds, warmup=1, min_sample_s=args.min_sample_s)
            peers = [k for k in impls if k in ("open_clip", "HF")]
            for key in impls:
                rate = case.rate(key)
                vs_fast = harness.ratio_cell(case.paired(key, [FAST])) if key != FAST else "1"
                vs_peer = harness.ratio_cell(case.paired(key, peers)) if peers and key not in peers else "—"
                if key == COMPILED:  # images after which compile's start-up is paid back against the fast path
                    gain = case.seconds(FAST) / b - case.seconds(COMPILED) / b
                    extra = startup[COMPILED] - startup[FAST]
                    even = f"{extra / gain:,.0f}" if gain > 0 else "never"
                else:
                    even = "—"
                rows.append(f"| {name} | {b} | {key} | {startup[key]:.2f} | {rate:.2f} | {vs_fast} | {vs_peer} | {even} |")
            del impls, case
    md = f"""## torch.compile against the hand-written fast path (CPU, fp32)

{header}; {args.rounds} interleaved rounds per case, {(time.perf_counter() - t_start) / 60:.1f} min.

{harness.command("bench_compile.py")}

Start-up: the first call's seconds on a freshly built model (compilation for `torch.compile`, the first
forward, with the ResNet's BatchNorm folding and conv packing, for the fast path). Images/s: median over rounds. "vs fast path" and
"vs faster peer": per-round speed ratios, median (range). Break-even: images encoded before the compiled
tower's total time, start-up included, falls below the fast path's ("never": the fast path is faster).

| model | batch | implementation | start-up s | img/s | vs fast path | vs faster peer | break-even images |
|---|---:|---|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + "\n"
    print(md)
    if args.out:
        args.out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
