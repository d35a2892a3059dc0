"""The peer pipeline for ``bench_embed.py``: the same job written the way OpenCLIP users write it.

Runs under ``.bench-venv/bin/python`` (open_clip_torch + torch 2.13 CPU): ``create_model_and_transforms``
for the model and its preprocessing (torchvision Resize/CenterCrop/ToTensor/Normalize on PIL images), a
``torch.utils.data.DataLoader`` with worker processes for decoding, ``encode_image`` under ``no_grad``.
Timing covers what ``bench_embed.py`` times for torchclip: first batch requested to last feature stored,
worker start-up included, model construction excluded; wall seconds and CPU seconds (this process and its
workers: on a shared machine CPU time per image is the steadier measure of efficiency).

PyPI's torchvision 0.28 is a CUDA build that cannot load its extension next to the CPU torch, so
``benchmarks/openclip_shim.py`` (declares the two missing op schemas) is imported before OpenCLIP.

Usage: .bench-venv/bin/python benchmarks/peer_openclip_embed.py --photos DIR --weights W.pt --out F.npy
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its reaped children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Files(Dataset):
    """Decode and preprocess one file per item, in the DataLoader's worker processes."""

    def __init__(self, files: list[Path], preprocess) -> None:  # noqa: ANN001 - torchvision Compose
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.preprocess(img)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", required=True)
    p.add_argument("--weights", help="OpenAI-layout state dict (torchclip.checkpoints.save_openai) for identical weights")
    p.add_argument("--model", default="ViT-B-32-quickgelu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", help="save the unit features here (.npy)")
    args = p.parse_args()
    importlib.import_module("openclip_shim")  # declares torchvision's missing op schemas: before open_clip
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.weights)
    model.eval()
    files = sorted(Path(args.photos).glob("*.jpg"))
    loader = DataLoader(Files(files, preprocess), batch_size=args.batch_size, num_workers=args.workers,
                        shuffle=False)
    feats = []
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            feats.append(F.normalize(model.encode_image(x), dim=-1).numpy())
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0  # the exhausted loader has joined (and so reaped) its workers
    if args.out:
        np.save(args.out, np.concatenate(feats))
    print(json.dumps({"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds,
                      "cpu_seconds": cpu, "cpu_ms_per_image": 1000 * cpu / len(files),
                      "open_clip": open_clip.__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
