"""Training-step throughput and peak memory: torchclip vs open_clip_torch, same model, batch and optimizer.

One step = forward of both towers, the contrastive loss (torchclip's ``clip_loss`` / OpenCLIP's ``ClipLoss``),
backward, AdamW step -- in fp32 on the CPU. Each measurement runs in a fresh subprocess so that peak memory
is that process's own: the reported peak is the resident-set high-water mark during the timed steps minus
the resident set after setup (model, optimizer, batch), i.e. what the step itself needs (activations,
gradients, optimizer state). Implementations are interleaved round by round so that background load hits
both alike; the median samples/s per implementation is reported.

Run it from the bench venv (it has both packages; see benchmarks/openclip_shim.py for torchvision):

    .bench-venv/bin/python benchmarks/bench_train.py --out benchmarks/results_train.md
    .bench-venv/bin/python benchmarks/bench_train.py --loader ../shared/data/emoji/google-train.tar
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (torchclip preset, open_clip model config, batch)
    "cpu-vit-64": ("cpu-vit-64", {"embed_dim": 192, "vision_cfg": {"image_size": 64, "layers": 4, "width": 192,
                                                                    "patch_size": 8, "head_width": 64},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 192, "heads": 3,
                                               "layers": 4}}, 128),
    "ViT-B/32": ("ViT-B/32", "ViT-B-32-quickgelu", 32),
}


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def _batch(batch: int, image_size: int, seed: int = 0):  # noqa: ANN202
    import torch

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    lengths = torch.randint(8, 24, (batch,), generator=g)  # caption-like lengths, as in real data
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0] = 49406
        ids[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        ids[i, n - 1] = 49407
    return pixels, ids


def _step_torchclip(case: str):  # noqa: ANN202
    import torch

    from torchclip.config import get_preset
    from torchclip.loss import clip_loss
    from torchclip.model import CLIP
    from torchclip.optim import param_groups

    preset, _, batch = CASES[case]
    model = CLIP(get_preset(preset)).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4)
    pixels, ids = _batch(batch, model.image_size)

    def step() -> None:
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(ids, normalize=True)
        loss = clip_loss(img, txt, model.logit_scale.exp())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch


def _step_open_clip(case: str):  # noqa: ANN202
    import importlib

    sys.path.insert(0, str(Path(__file__).parent))
    importlib.import_module("openclip_shim")  # first: lets torchvision import on a CPU-only torch
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    _, cfg, batch = CASES[case]
    if isinstance(cfg, dict):
        import tempfile

        d = Path(tempfile.mkdtemp())
        (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
        model = open_clip.create_model(f"local-dir:{d}")
    else:
        model = open_clip.create_model(cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)
    loss_fn = ClipLoss()
    pixels, ids = _batch(batch, model.visual.image_size[0] if isinstance(model.visual.image_size, tuple)
                         else model.visual.image_size)

    def step() -> None:
        img, txt, scale = model(pixels, ids)[:3]  # (image_features, text_features, logit_scale)
        loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, batch


def _child(impl: str, case: str, steps: int, threads: int) -> dict:
    """Runs in the subprocess: setup, one warmup step, ``steps`` timed steps."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step, batch = (_step_torchclip if impl == "torchclip" else _step_open_clip)(case)
    base = _rss_kib()
    step()  # warmup: optimizer state is allocated here, so it counts in the peak
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "case": case, "samples_per_s": batch * steps / dt, "step_s": dt / steps,
            "peak_mib": (peak - base) / 1024, "rss_peak_mib": peak / 1024}


def measure(cases: list[str], rounds: int, steps: int, threads: int) -> list[dict]:
    results = []
    for case in cases:
        for r in range(rounds):
            for impl in (("torchclip", "open_clip") if r % 2 == 0 else ("open_clip", "torchclip")):
                cmd = [sys.executable, __file__, "--child", impl, case, str(steps), str(threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{case:<11} round {r} {impl:<9} {res['samples_per_s']:8.1f} samples/s  "
                      f"step peak {res['peak_mib']:7.0f} MiB", flush=True)
                results.append(res)
    return results


def summarize(results: list[dict]) -> str:
    lines = ["| model (batch) | torchclip samples/s | open_clip samples/s | speed ratio | torchclip step peak MiB "
             "| open_clip step peak MiB | memory ratio |", "|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in results):
        ours = [r for r in results if r["case"] == case and r["impl"] == "torchclip"]
        peer = [r for r in results if r["case"] == case and r["impl"] == "open_clip"]
        sp_o = statistics.median(r["samples_per_s"] for r in ours)
        sp_p = statistics.median(r["samples_per_s"] for r in peer)
        m_o = statistics.median(r["peak_mib"] for r in ours)
        m_p = statistics.median(r["peak_mib"] for r in peer)
        lines.append(f"| {case} ({CASES[case][2]}) | {sp_o:.1f} | {sp_p:.1f} | **{sp_o / sp_p:.2f}x** | {m_o:.0f} "
                     f"| {m_p:.0f} | {m_o / m_p:.2f} |")
    return "\n".join(lines)


def loader_throughput(source: str, workers: list[int], batches: int, image_size: int = 64) -> list[tuple[int, float]]:
    """Samples/s of the training data stream (decode, augment, tokenize) with 0, 1, 2... DataLoader workers."""
    import torch

    from torchclip.data import CaptionAugment, ContrastiveStream
    from torchclip.tokenizer import Tokenizer

    tok = Tokenizer([], context_length=77)
    out = []
    for nw in workers:
        s = ContrastiveStream(source, image_size=image_size, tokenizer=tok, batch_size=128, num_workers=nw,
                              shuffle_buffer=1000, caption_augment=CaptionAugment(0.5, True))
        it = iter(torch.utils.data.DataLoader(s, batch_size=None, num_workers=nw))
        next(it)  # worker start-up and the shuffle buffer fill are not steady state
        t = time.perf_counter()
        for _ in range(batches):
            next(it)
        out.append((nw, 128 * batches / (time.perf_counter() - t)))
        print(f"loader workers={nw}: {out[-1][1]:.0f} samples/s", flush=True)
        del it
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        impl, case, steps, threads = argv[1], argv[2], int(argv[3]), int(argv[4])
        print(json.dumps(_child(impl, case, steps, threads)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="cpu-vit-64,ViT-B/32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loader", help="also measure the data stream on these shards")
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args(argv)
    results = measure(args.cases.split(","), args.rounds, args.steps, args.threads)
    table = summarize(results)
    print(table)
    text = table
    if args.loader:
        rows = loader_throughput(args.loader, [0, 1, 2], args.loader_batches)
        text += "\n\n| DataLoader workers | samples/s (decode + augment + tokenize) |\n|---|---|\n"
        text += "\n".join(f"| {nw} | {v:.0f} |" for nw, v in rows)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
