"""Runs never mix and never lose work: a folder holds one run, retention deletes only its own checkpoints,
resume passes over damaged checkpoints, a failed resume changes nothing, a failed write says what was kept;
``torchclip train`` says where it wrote and prints evaluation as a table."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from trainkit import make_shards, tiny_overrides

from torchclip.cli import main
from torchclip.train import train
from torchclip.train.config import TrainConfig
from torchclip.train.logs import format_eval_table, read_metrics
from torchclip.train.state import (
    RunFolderError,
    latest_intact_checkpoint,
    list_checkpoints,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


def _config(tmp_path: Path, shards: str, name: str = "c.json", **sections: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(tiny_overrides(shards, tmp_path / "run", **sections)))
    return path


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["train", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("torchclip train: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_says_where_it_wrote(tmp_path: Path, shards: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _train(["--config", str(_config(tmp_path, shards)), "--quiet"], capsys)
    run = tmp_path / "run"
    assert code == 0
    assert out.splitlines() == [f"run folder: {run}", f"model:      {run / 'model.safetensors'}",
                                f"tokenizer:  {run / 'tokenizer.txt.gz'}"]
    assert (run / "model.safetensors").is_file() and (run / "tokenizer.txt.gz").is_file()
    assert json.loads((run / "config.json").read_text())["run"]["progress"] is False  # --quiet


def test_a_folder_holds_one_run(tmp_path: Path, shards: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run into the folder used to append to the first's metrics.jsonl, keep its checkpoints, and a
    later --resume continued the first run."""
    first = _config(tmp_path, shards, optim={"steps": 4})
    assert _train(["--config", str(first)], capsys)[0] == 0
    run = tmp_path / "run"
    metrics = (run / "metrics.jsonl").read_text()
    second = _config(tmp_path, shards, "d.json", optim={"steps": 2, "lr": 2e-3})
    code, _, err = _train(["--config", str(second)], capsys)
    line = _error(err)
    assert code == 2 and f"{run} already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "metrics.jsonl").read_text() == metrics
    assert json.loads((run / "config.json").read_text())["optim"]["steps"] == 4
    with pytest.raises(RunFolderError):  # the library refuses too
        train(TrainConfig.from_dict(json.loads(second.read_text())))

    (run / "notes.txt").write_text("mine")
    code, _, _ = _train(["--config", str(second), "--overwrite"], capsys)
    assert code == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["ckpt-00000002.pt"]
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 2e-3
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite removes the run, nothing else
    code, _, err = _train(["--config", str(second), "--overwrite", "--resume"], capsys)
    assert code == 2 and "give one" in _error(err)


def test_retention_never_deletes_checkpoints_it_did_not_write(tmp_path: Path) -> None:
    """Retention used to count every checkpoint in the folder: a run beside another run's ckpt-00001000.pt
    deleted its own new checkpoints as soon as they were written."""
    save_checkpoint(tmp_path, 1000, {"x": torch.zeros(1)})
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"x": torch.zeros(1)}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000020.pt", "ckpt-00000030.pt",
                                                            "ckpt-00001000.pt"]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_falls_back_past_a_damaged_checkpoint(damage: str, tmp_path: Path, shards: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, shards, optim={"steps": 4}, run={"save_every": 1, "keep_checkpoints": 3})
    assert _train(["--config", str(cfg)], capsys)[0] == 0
    ckpts = tmp_path / "run" / "checkpoints"
    newest = ckpts / "ckpt-00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    more = _config(tmp_path, shards, "more.json", optim={"steps": 6}, run={"save_every": 1, "keep_checkpoints": 3})
    code, _, err = _train(["--config", str(more), "--resume"], capsys)
    assert code == 0, err
    assert f"checkpoint {newest} is damaged" in err and "resumed from" in err and "ckpt-00000003.pt" in err
    assert (ckpts / "ckpt-00000004.pt.damaged").read_bytes() == data[: len(data) // 2] if damage == "truncated" \
        else (ckpts / "ckpt-00000004.pt.damaged").read_bytes() == b""
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt-00000004.pt", "ckpt-00000005.pt",
                                                         "ckpt-00000006.pt"]
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_only_damaged_checkpoints_is_an_error_that_keeps_them(tmp_path: Path) -> None:
    (tmp_path / "ckpt-00000002.pt").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(RunFolderError, match=r"no intact checkpoint .*ckpt-00000002\.pt is damaged \(RuntimeError: "):
        latest_intact_checkpoint(tmp_path)
    assert (tmp_path / "ckpt-00000002.pt").exists()
    assert latest_intact_checkpoint(tmp_path / "none") is None


def test_a_failed_resume_leaves_config_json_alone(tmp_path: Path, shards: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``--resume --model.preset=...`` on the wrong run used to rewrite config.json before failing, which
    broke the README's recovery command (``--config RUN/config.json --resume``)."""
    cfg = _config(tmp_path, shards, optim={"steps": 2})
    assert _train(["--config", str(cfg)], capsys)[0] == 0
    saved = (tmp_path / "run" / "config.json").read_bytes()
    code, _, err = _train(["--config", str(cfg), "--resume", "--model.embed_dim=32", "--optim.steps=3"], capsys)
    line = _error(err)
    assert code == 2 and "ckpt-00000002.pt was trained with model.embed_dim=16 (this config: 32)" in line
    assert (tmp_path / "run" / "config.json").read_bytes() == saved
    # and the recovery command still works, extending the run
    code, _, err = _train(["--config", str(tmp_path / "run" / "config.json"), "--resume", "--optim.steps=3"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["steps"] == 3


def test_a_full_disk_is_one_line_naming_what_was_kept(tmp_path: Path, shards: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torchclip.train.state as state

    real, calls = state.torch.save, {"n": 0}

    def fills_the_disk(obj, f):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f)

    monkeypatch.setattr(state.torch, "save", fills_the_disk)
    cfg = _config(tmp_path, shards, optim={"steps": 4})
    code, _, err = _train(["--config", str(cfg)], capsys)
    ckpts = tmp_path / "run" / "checkpoints"
    line = _error(err)
    assert code == 1
    assert f"cannot write checkpoint {ckpts / 'ckpt-00000004.pt'}: No space left on device" in line
    assert f"the run is intact up to {ckpts / 'ckpt-00000002.pt'} (step 2)" in line and "--resume" in line
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-00000002.pt"]  # no half-written file left


def test_a_read_only_run_folder_is_one_line(tmp_path: Path, shards: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = Path.write_text

    def read_only(self: Path, *a, **kw):  # noqa: ANN002, ANN003
        if self.name == "config.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", read_only)
    code, _, err = _train(["--config", str(_config(tmp_path, shards))], capsys)
    line = _error(err)
    assert code == 1 and f"cannot write the run folder {tmp_path / 'run'}: Permission denied" in line
    assert "nothing of this run was written" in line


def test_evaluation_prints_an_aligned_table_with_each_metric_once(tmp_path: Path, shards: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    val = shards.replace("{000..001}", "000")
    cfg = _config(tmp_path, shards, optim={"steps": 1},
                  eval={"sets": [f"val={val}"], "label_keys": ["name", "category"], "templates": ["a {}."]})
    code, _, err = _train(["--config", str(cfg)], capsys)
    assert code == 0
    lines = err.splitlines()
    at = next(i for i, ln in enumerate(lines) if "zero-shot evaluation" in ln)
    table = lines[at + 1: at + 4]
    assert table[0].split() == ["set/labels", "classes", "acc1", "acc5", "acc10", "mean", "recall", "t2i", "R@1",
                                "t2i", "R@5", "t2i", "R@10"]
    assert [row.split()[0] for row in table[1:]] == ["val/name", "val/category"]
    ends = {len(row.rstrip()) for row in table}
    assert len(ends) == 1  # right-aligned columns: every row ends where the header does
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")[0]
    assert not [k for k in rec if "i2t" in k]  # image->prompt recall@1 is acc1: not logged twice


def test_format_eval_table() -> None:
    text = format_eval_table({"v/name/acc1": 0.125, "v/name/acc10": float("nan"), "v/name/classes": 8.0,
                              "v/name/t2i_R@1": 1.0, "v/category/acc1": 0.5, "v/category/custom": 0.25})
    assert text.splitlines() == [
        "  set/labels  classes   acc1  acc10  t2i R@1  custom",
        "  v/name            8  12.50      -   100.00       -",
        "  v/category        -  50.00      -        -   25.00",
    ]
