"""``torchclip eval`` end to end on a saved tiny checkpoint, and the CLIP_benchmark interface."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from evalkit import byte_tokenizer, color_shard, tiny_model

from torchclip import save
from torchclip.evaluation import cli
from torchclip.evaluation.clip_benchmark import (
    BenchmarkTokenizer,
    benchmark_json,
    find_tokenizer,
    load_torchclip,
    register,
    resolve_tokenizer,
)

CB_KEYS = ["dataset", "model", "pretrained", "task", "metrics", "language"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A training run's folder as users have it: a checkpoint and the vocabulary it was trained with."""
    d = tmp_path / "run"
    d.mkdir()
    save(tiny_model(), d / "checkpoint.safetensors")
    byte_tokenizer().save(d / "tokenizer.txt.gz")
    return d


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    return (color_shard(tmp_path / "train.tar", per_class=6, style="a"),
            color_shard(tmp_path / "test.tar", per_class=3, style="b"))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_zeroshot_cli_writes_clip_benchmark_json(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zs.json"
    code, stdout, _ = _run(["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset",
                            str(shards[1]), "--label-key", "json:category", "--templates", "bare",
                            "--output", str(out), "--confusion-plot", str(tmp_path / "cm.png"),
                            "--cache-dir", str(tmp_path / "cache"), "--quiet"], capsys)
    assert code == 0 and "acc1=" in stdout
    doc = json.loads(out.read_text())
    assert list(doc)[:6] == CB_KEYS and doc["task"] == "zeroshot_classification"
    assert set(doc["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and doc["metrics"]["acc5"] is None
    assert (tmp_path / "cm.png").stat().st_size > 1000
    out2 = tmp_path / "zs2.json"
    code, _, _ = _run(["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset",
                       str(shards[1]), "--label-key", "json:category", "--templates", "bare", "photo",
                       "--output", str(out2), "--no-cache", "--quiet"], capsys)
    assert code == 0 and [d["templates"] for d in json.loads(out2.read_text())] == ["bare", "photo"]


def test_zeroshot_cli_class_prompts(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"red": [["a red square."], ["red", "the colour red"]],  # two groups
                                   "green": ["a green square."], "blue": ["a blue square.", "blue"]}))
    out = tmp_path / "zs.json"
    base = ["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset", str(shards[1]),
            "--label-key", "json:category", "--no-cache", "--quiet"]
    code, stdout, _ = _run([*base, "--class-prompts", str(prompts), "--output", str(out)], capsys)
    assert code == 0 and f"class prompts={prompts}" in stdout
    doc = json.loads(out.read_text())
    assert doc["class_prompts"] == str(prompts) and "templates" not in doc
    code, _, err = _run([*base, "--class-prompts", str(prompts), "--templates", "bare"], capsys)
    assert code == 1 and "--class-prompts replaces" in err and len(err.strip().splitlines()) == 1
    prompts.write_text(json.dumps({"red": ["x"], "green": ["y"]}))
    code, _, err = _run([*base, "--class-prompts", str(prompts)], capsys)
    assert code == 1 and "missing ['blue']" in err and "Traceback" not in err


def test_zeroshot_cli_hubness_bank(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from torchclip import load
    from torchclip.evaluation import evaluate_zeroshot, hubness_penalty, zeroshot_logits
    from torchclip.evaluation.datasets import load_webdataset
    from torchclip.evaluation.features import extract_image_features
    from torchclip.evaluation.metrics import classification_metrics
    from torchclip.evaluation.zeroshot import build_classifier

    base = ["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset", str(shards[1]),
            "--label-key", "json:category", "--templates", "bare", "--no-cache", "--quiet"]
    out = tmp_path / "zs.json"
    code, stdout, _ = _run([*base, "--hubness-bank", str(shards[0]), "--hubness-k", "3", "--output", str(out)],
                           capsys)
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["hubness_bank"] == str(shards[0]) and doc["hubness_k"] == 3
    # the same numbers by hand: penalty from the bank's features, then the corrected logits
    model, tok = load(run_dir / "checkpoint.safetensors")[0].eval(), byte_tokenizer()
    ds = load_webdataset(shards[1], label_key="json:category")
    feats = extract_image_features(model, ds, cache_dir=False, progress=False)
    bank = extract_image_features(model, load_webdataset(shards[0]), cache_dir=False, progress=False)
    w = build_classifier(model, tok, ds.classnames, "bare", cache_dir=False)
    logits = zeroshot_logits(feats, w, penalty=hubness_penalty(w, bank, 3))
    want = classification_metrics(logits, ds.labels)
    assert doc["metrics"]["acc1"] == pytest.approx(want["acc1"])
    res = evaluate_zeroshot(model, ds, tok, "bare", image_features=feats, cache_dir=False, progress=False,
                            hubness_bank=bank, hubness_k=3)
    torch.testing.assert_close(res.logits, logits)
    assert not torch.allclose(res.logits, zeroshot_logits(feats, w))  # control: the bank changes the scores
    code, _, err = _run([*base, "--hubness-bank", str(shards[0]), "--hubness-k", "1000"], capsys)
    assert code == 1 and "--hubness-k 1000 is more than the 18 images" in err and len(err.strip().splitlines()) == 1


def test_cli_errors_are_one_line(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "names.txt").write_text("red\ngreen\n")
    code, _, err = _run(["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset",
                         str(shards[1]), "--label-key", "json:category", "--classnames",
                         str(tmp_path / "names.txt"), "--quiet", "--no-cache"], capsys)
    assert code == 1 and "unknown class name 'blue'" in err and "Traceback" not in err
    assert err.startswith("torchclip eval: error: ") and len(err.strip().splitlines()) == 1
    code, _, err = _run(["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset",
                         str(shards[1]), "--exclude-class", "red", "--quiet"], capsys)
    assert code == 1 and "no class names" in err  # nothing to exclude from an unlabelled set


def test_classnames_of_the_kept_classes_with_exclude(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A CLIP_benchmark classnames.txt lists only the evaluated classes; the excluded class's samples are
    dropped, not reported as an unknown class name."""
    (tmp_path / "names.txt").write_text("green\nred\n")
    argv = ["zeroshot", "--model", str(run_dir / "checkpoint.safetensors"), "--dataset", str(shards[1]),
            "--label-key", "json:category", "--classnames", str(tmp_path / "names.txt"), "--exclude-class", "blue"]
    args = cli.build_parser().parse_args(argv)
    ds = cli._dataset(args, args.dataset)
    assert ds.classnames == ["green", "red"] and len(ds) == 6
    assert [m["category"] for m in ds.meta] == [ds.classnames[i] for i in ds.labels]
    assert _run([*argv, "--no-cache", "--quiet"], capsys)[0] == 0
    code, _, err = _run([*argv, "--exclude-class", "purple", "--no-cache", "--quiet"], capsys)
    assert code == 1 and "purple" in err  # a typo in an excluded name still fails


def test_probe_fewshot_retrieval_cli(run_dir: Path, shards: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", str(run_dir / "checkpoint.safetensors"), "--label-key", "json:category",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    train, test = map(str, shards)
    code, stdout, _ = _run(["probe", "--train", train, "--test", test, "--group-key", "group",
                            "--output", str(tmp_path / "p.json"), *common], capsys)
    assert code == 0 and "linear probe" in stdout
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["task"] == "linear_probe" and doc["metrics"]["acc1"] > 0.6  # colours are easy
    code, stdout, _ = _run(["fewshot", "--train", train, "--test", test, "--k", "1", "2", "--seeds", "0",
                            "--plot", str(tmp_path / "fs.png"), *common], capsys)
    assert code == 0 and "2-shot" in stdout and (tmp_path / "fs.png").exists()
    code, stdout, _ = _run(["retrieval", "--dataset", test, "--recall-k", "1", "5",
                            "--output", str(tmp_path / "r.json"), *common], capsys)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and set(doc["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                                                 for k in (1, 5)}


def test_loader_contract_and_registration(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, transform, tokenizer = load_torchclip("cpu-vit-32", str(run_dir / "checkpoint.safetensors"))
    ids = tokenizer(["a photo of a cat", "x" * 500])  # long captions are cut, not fatal
    assert isinstance(tokenizer, BenchmarkTokenizer) and ids.shape == (2, 24) and ids.dtype == torch.int64
    from PIL import Image

    pixels = transform(Image.new("RGB", (50, 40), "red"))[None]
    with torch.no_grad():  # what CLIP_benchmark calls
        assert model.encode_image(pixels.to("cpu")).shape == (1, 32)
        assert model.encode_text(ids.to("cpu")).shape == (2, 32)
    fake = types.ModuleType("clip_benchmark")
    fake_models = types.ModuleType("clip_benchmark.models")
    fake_models.TYPE2FUNC = {"open_clip": None}
    fake_models.MODEL_TYPES = ["open_clip"]
    fake.models = fake_models
    monkeypatch.setitem(sys.modules, "clip_benchmark", fake)
    monkeypatch.setitem(sys.modules, "clip_benchmark.models", fake_models)
    register()
    register()
    assert fake_models.TYPE2FUNC["torchclip"] is load_torchclip and fake_models.MODEL_TYPES.count("torchclip") == 1


def test_clip_benchmark_subcommand_runs_its_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    fake_models = types.ModuleType("clip_benchmark.models")
    fake_models.TYPE2FUNC, fake_models.MODEL_TYPES = {}, []
    fake_cli = types.ModuleType("clip_benchmark.cli")

    def fake_main() -> int:
        seen["argv"], seen["types"] = list(sys.argv), list(fake_models.MODEL_TYPES)
        return 0

    fake_cli.main = fake_main
    for name, mod in (("clip_benchmark", types.ModuleType("clip_benchmark")),
                      ("clip_benchmark.models", fake_models), ("clip_benchmark.cli", fake_cli)):
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["clip_benchmark"].models = fake_models
    assert cli.main(["clip-benchmark", "eval", "--model_type", "torchclip"]) == 0
    assert seen == {"argv": ["clip_benchmark", "eval", "--model_type", "torchclip"], "types": ["torchclip"]}


def test_tokenizer_resolution(run_dir: Path, tmp_path: Path) -> None:
    assert find_tokenizer(run_dir / "checkpoint.safetensors") == run_dir / "tokenizer.txt.gz"
    assert find_tokenizer(tmp_path / "elsewhere.safetensors") is None
    with pytest.raises(ValueError, match="own vocabulary"):
        resolve_tokenizer(tiny_model(), None, tmp_path / "elsewhere.safetensors")
    from torchclip.tokenizer import Tokenizer

    with pytest.raises(ValueError, match="vocab_size"):
        resolve_tokenizer(tiny_model(), Tokenizer([("a", "b")]))


def test_benchmark_json_layout() -> None:
    doc = benchmark_json(dataset="d", model="m", pretrained="p", task="linear_probe",
                         metrics={"acc1": 0.5, "acc5": float("nan")}, C=0.1)
    assert list(doc) == [*CB_KEYS, "C"] and doc["metrics"]["acc5"] is None and doc["language"] == "en"
    with pytest.raises(ValueError, match="unknown task"):
        benchmark_json(dataset="d", model="m", pretrained="p", task="nope", metrics={})
