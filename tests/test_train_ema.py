"""A moving average of the weights (``optim.ema``): what evaluation and the saved model use, kept in every
checkpoint so a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from trainkit import make_shards, tiny_overrides

from torchclip.checkpoints import load_model
from torchclip.train import load_config, train
from torchclip.train.config import TrainConfig
from torchclip.train.loop import RunFolderError
from torchclip.train.state import list_checkpoints, load_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


def _cfg(shards: str, out: Path, ema: float = 0.5) -> TrainConfig:
    return TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 3, "ema": ema},
                                                run={"save_every": 1, "keep_checkpoints": 5}))


def test_saved_model_is_the_moving_average_of_the_steps(tmp_path: Path, shards: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclip.train import loop

    evaluated = []
    monkeypatch.setattr(loop, "evaluate_sets", lambda model, *a, **k: evaluated.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}) or {})
    out = tmp_path / "run"
    cfg = _cfg(shards, out)
    train(TrainConfig.from_dict({**cfg.to_dict(), "eval": {"sets": [f"val={shards}"], "every": 3}}))
    raw = [load_checkpoint(p)["model"] for p in list_checkpoints(out / "checkpoints")]  # the weights after steps 1..3
    assert len(raw) == 3
    ema = dict(raw[0])  # the first update copies the weights, later ones move 1 - 0.5 of the way
    for step in raw[1:]:
        ema = {k: 0.5 * ema[k] + 0.5 * v if v.is_floating_point() else v for k, v in step.items()}
    saved = load_model(out / "model.safetensors").state_dict()
    moved = 0
    for k, v in saved.items():
        torch.testing.assert_close(v, ema[k], atol=1e-6, rtol=1e-6, msg=k)
        moved += not torch.allclose(v, raw[-1][k])
    assert moved > 5  # negative control: the average is not the last step's weights
    assert len(evaluated) == 1 and all(torch.equal(evaluated[0][k], v) for k, v in saved.items())  # eval saw it


def test_resume_restores_the_average(tmp_path: Path, shards: str) -> None:
    whole = tmp_path / "whole"
    train(_cfg(shards, whole))
    cut = tmp_path / "cut"  # the same run stopped after step 2's checkpoint
    shutil.copytree(whole, cut)
    (cut / "model.safetensors").unlink()
    list_checkpoints(cut / "checkpoints")[-1].unlink()
    train(_cfg(shards, cut), resume=True)
    a = load_model(whole / "model.safetensors").state_dict()
    b = load_model(cut / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(list_checkpoints(cut / "checkpoints")[-1])
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == 3


def test_resume_refuses_a_checkpoint_with_the_other_setting(tmp_path: Path, shards: str) -> None:
    out = tmp_path / "run"
    train(_cfg(shards, out, ema=0.0))
    assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["ema"] is None
    with pytest.raises(RunFolderError, match="no weight average"):
        train(_cfg(shards, out, ema=0.9), resume=True)


@pytest.mark.parametrize("args,match", [(["--optim.ema=1.0"], "optim.ema"),
                                        (["--optim.ema=0.9", "--dist.strategy=fsdp"], "fsdp")])
def test_config_checks(args: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, args)
    assert load_config(None, ["--optim.ema=0.99"]).optim.ema == 0.99
