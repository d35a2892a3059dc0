"""torchrun smoke tests on CPU with gloo: 2-process DDP (the default) and FSDP2 train, checkpoint and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainkit import make_shards, tiny_overrides

from torchclip.checkpoints import load_model
from torchclip.train.logs import read_metrics
from torchclip.train.state import latest_checkpoint, load_checkpoint


def _torchrun(cfg_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "torchclip.train", "--config", str(cfg_path), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_gloo_run(tmp_path: Path, strategy: str) -> None:
    shards = make_shards(tmp_path / "data", n_shards=3, per_shard=8)
    out = tmp_path / "run"
    cfg = tiny_overrides(shards, out, optim={"steps": 3, "accum_steps": 2 if strategy == "ddp" else 1},
                         data={"batch_size": 4}, dist={"strategy": strategy})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    res = _torchrun(cfg_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]  # rank 0 only logs
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert state["world_size"] == 2 and sorted(state["data"]["cursors"]) == ["0", "1"]  # one stream per rank
    assert state["data"]["batches"] == 3 * cfg["optim"]["accum_steps"]
    model = load_model(out / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if strategy == "fsdp":
        return  # resume is strategy-independent (full state dicts); DDP covers it below
    # resume on the same world size continues to a longer schedule
    res = _torchrun(cfg_path, "--resume", "--optim.steps=4")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
