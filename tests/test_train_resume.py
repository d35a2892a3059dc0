"""Proof test: a run killed with SIGKILL at a random step and resumed ends with the uninterrupted run's weights,
and no checkpoint on disk is ever half-written (every listed file loads, at every moment we look)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import make_shards, tiny_overrides

from torchclip.train import TrainConfig, train
from torchclip.train.state import list_checkpoints, load_checkpoint

STEPS = 8


def _config(shards: str, out: Path) -> dict:
    # Two DataLoader workers, so resuming must also restore the workers' round-robin order; a checkpoint
    # every 3 steps, so the kill usually lands between checkpoints (mid-epoch: 32 samples, 8 per batch).
    return tiny_overrides(shards, out, optim={"steps": STEPS, "warmup": 2},
                          data={"num_workers": 2, "shuffle_buffer": 12, "tag_dropout": 0.3, "shuffle_tags": True},
                          run={"save_every": 3, "keep_checkpoints": 3})


def _launch(cfg_path: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "torchclip.train", "--config", str(cfg_path), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


class _Auditor(threading.Thread):
    """Loads every complete checkpoint it can see, over and over, while the run writes them."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.stop, self.loaded, self.errors = folder, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            for p in list_checkpoints(self.folder):
                try:
                    load_checkpoint(p)
                    self.loaded += 1
                except FileNotFoundError:
                    pass  # rotated away between listing and loading: fine
                except Exception as e:  # a half-written file would land here
                    self.errors.append(f"{p.name}: {e}")
            time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "data", n_shards=2, per_shard=16)
    torch.set_num_threads(1)
    reference = tmp_path / "reference"
    try:
        train(TrainConfig.from_dict(_config(shards, reference)))
    finally:
        torch.set_num_threads(max(1, os.cpu_count() or 1))

    out = tmp_path / "killed"
    cfg_path = tmp_path / "killed.json"
    cfg_path.write_text(json.dumps(_config(shards, out)))
    kill_at = random.Random().randint(2, STEPS - 2)
    auditor = _Auditor(out / "checkpoints")
    auditor.start()
    proc = _launch(cfg_path)
    deadline = time.time() + 120
    while _last_step(out) < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _last_step(out)
    assert killed_at < STEPS, "the run finished before it could be killed"

    resumed = _launch(cfg_path, "--resume")
    log, _ = resumed.communicate(timeout=180)
    auditor.stop.set()
    auditor.join()
    assert resumed.returncode == 0, log
    assert not auditor.errors, auditor.errors
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]

    want = load_file(reference / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert want.keys() == got.keys()
    worst = max(float((want[k] - got[k]).abs().max()) for k in want)
    assert worst <= 1e-6, f"killed at step {killed_at}: weights differ by {worst}"
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the log reads as one run
