"""The real CLIP_benchmark command line evaluating a torchclip checkpoint gives ``torchclip eval``'s numbers.

CLIP_benchmark is not in the test extra (it pulls torchvision, open_clip_torch and pycocoevalcap, and PyPI's
torchvision is a CUDA build), so this skips unless it is installed; run it in the peers' venv:
``.bench-venv/bin/python -m pytest tests/test_clip_benchmark_interop.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from evalkit import byte_tokenizer, tiny_model, write_shard

from torchclip import save
from torchclip.evaluation import cli

pytest.importorskip("clip_benchmark", reason="CLIP_benchmark is not installed (pip install clip_benchmark)")

REPO = Path(__file__).resolve().parents[1]
KEPT, EXCLUDED = ("red", "green", "blue"), "yellow"


def _samples(classes: tuple[str, ...]) -> list[dict[str, object]]:
    # the excluded class comes last, so image i (seeded by its index) is the same picture in both shards
    return [{"key": f"s_{c}_{i}", "color": c, "json": {"category": c}, **({"cls": KEPT.index(c)} if c in KEPT else {})}
            for c in classes for i in range(3)]


@pytest.mark.slow
def test_clip_benchmark_cli_matches_torchclip_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    ckpt.parent.mkdir()
    save(tiny_model(), ckpt)
    byte_tokenizer().save(ckpt.parent / "tokenizer.txt.gz")  # found next to the checkpoint by both sides
    full = write_shard(tmp_path / "full.tar", _samples((*KEPT, EXCLUDED)))
    root = tmp_path / "wds" / "colors"  # CLIP_benchmark's layout (datasets/builder.py, build_wds_dataset)
    write_shard(root / "test" / "0.tar", _samples(KEPT))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(KEPT) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")

    # PyPI's CUDA torchvision does not import on a CPU torch: then go through the project's shim
    broken = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode != 0
    launcher = [str(REPO / "benchmarks" / "openclip_shim.py")] if broken else []
    out = tmp_path / "cb.json"
    r = subprocess.run([sys.executable, *launcher, "-m", "torchclip.cli", "eval", "clip-benchmark", "eval",
                        "--model_type", "torchclip", "--model", "tiny", "--pretrained", str(ckpt),
                        "--dataset", "wds/colors", "--dataset_root", str(tmp_path / "wds" / "{dataset}"),
                        "--no_amp", "--num_workers", "0", "--output", str(out), "--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads(out.read_text())

    mine = tmp_path / "tc.json"
    assert cli.main(["zeroshot", "--model", "tiny", "--pretrained", str(ckpt), "--dataset", str(full),
                     "--label-key", "json:category", "--classnames", str(root / "classnames.txt"),
                     "--exclude-class", EXCLUDED, "--templates", "a photo of a {}.", "--no-cache", "--quiet",
                     "--output", str(mine)]) == 0
    ours = json.loads(mine.read_text())
    assert theirs["task"] == ours["task"] == "zeroshot_classification"
    for k in ("acc1", "mean_per_class_recall"):  # the same counts, written as the same float
        assert ours["metrics"][k] == theirs["metrics"][k], (k, ours["metrics"], theirs["metrics"])
    assert ours["metrics"]["acc5"] is None  # 3 classes: NaN in CLIP_benchmark, null in strict JSON
