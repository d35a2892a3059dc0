"""torchclip export: ONNX towers with a dynamic batch equal PyTorch (<= 1e-4), int8 quantization, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from torchclip.config import OPENAI_MEAN
from torchclip.tokenizer import load_tokenizer

pytest.importorskip("onnxruntime", reason="the export check needs onnxruntime")
pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")

from torchclip import CLIPConfig, create_model  # noqa: E402
from torchclip.cli import main as cli_main  # noqa: E402
from torchclip.config import TextConfig, VisionConfig  # noqa: E402
from torchclip.export import (  # noqa: E402
    OnnxTower,
    TextTower,
    check_onnx,
    export_onnx,
    opset_range,
    quantize_int8,
    written_opset,
)
from torchclip.model import CLIP  # noqa: E402

TOKENIZER = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
CAPTIONS = ["a photo of a cat", "an emoji of a red heart", "x", "a diagram " * 20, "two dogs playing in the snow"]


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return create_model("cpu-vit-32").eval()


@pytest.fixture(scope="module")
def exported(model: CLIP, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_onnx(model, tmp_path_factory.mktemp("onnx"), exporter="legacy")


def _ids(model: CLIP) -> torch.Tensor:
    from conftest import SHARED

    path = SHARED / TOKENIZER
    if path.exists():
        from torchclip.tokenizer import load_tokenizer

        return load_tokenizer(path)(CAPTIONS, truncate=True)
    from torchclip.export import example_ids

    # like CAPTIONS: the longest row ends well before the context, so trimming has columns to drop
    return example_ids(model, [3, 5, 1, 41, 6])


def test_text_tower_full_length_equals_the_trimmed_eager_forward(model: CLIP) -> None:
    ids = _ids(model)
    with torch.no_grad():
        torch.testing.assert_close(TextTower(model)(ids), model.encode_text(ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(TextTower(model, normalize=True)(ids), model.encode_text(ids, normalize=True),
                                   atol=1e-5, rtol=0)


def test_trim_ids(model: CLIP) -> None:
    from torchclip.export import trim_ids

    ids = _ids(model)
    eot = model.config.text.eot_id
    cut = trim_ids(ids, eot)
    assert cut.shape[1] == int((ids == eot).int().argmax(1).max()) + 1 < ids.shape[1]
    assert np.array_equal(trim_ids(ids.numpy(), eot), cut.numpy())
    no_eot = torch.ones(2, 8, dtype=torch.long)
    assert trim_ids(no_eot, eot) is no_eot


def test_onnx_matches_torch_for_any_batch(model: CLIP, exported: dict[str, Path]) -> None:
    diffs = check_onnx(model, exported, batch_sizes=(1, 3, 8))
    assert diffs["image"] <= 1e-4 and diffs["text"] <= 1e-4, diffs
    real = check_onnx(model, {"text": exported["text"]}, text_ids=_ids(model))
    assert real["text"] <= 1e-4, real


def test_int8_is_close_and_smaller(model: CLIP, exported: dict[str, Path], tmp_path: Path) -> None:
    q = quantize_int8(exported["image"], tmp_path / "image.int8.onnx")
    assert q.stat().st_size < 0.5 * exported["image"].stat().st_size
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    a, b = OnnxTower(exported["image"])(x), OnnxTower(q)(x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos
    qt = quantize_int8(exported["text"], tmp_path / "text.int8.onnx")
    ids = _ids(model).numpy()
    a, b = OnnxTower(exported["text"])(ids), OnnxTower(qt)(ids)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos


def test_resnet_image_tower(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rn = create_model("cpu-rn-64").eval()
    paths = export_onnx(rn, tmp_path, towers=["image"], exporter="legacy")
    assert check_onnx(rn, paths, batch_sizes=(1, 5))["image"] <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TORCHCLIP_SLOW_TESTS") != "1",
                    reason="the dynamo exporter costs ~20 s of fixed overhead; TORCHCLIP_SLOW_TESTS=1 runs it "
                           "(benchmarks/bench_export.py exercises it on ViT-B/32)")
def test_dynamo_exporter(tmp_path: Path) -> None:
    """torch.export-based exporter (``--exporter dynamo``), on a one-layer model."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    cfg = CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=16, layers=1, width=64, patch_size=8),
                     text=TextConfig(context_length=16, vocab_size=1000, width=64, heads=1, layers=1),
                     activation="gelu")
    torch.manual_seed(0)
    tiny = CLIP(cfg).eval()
    paths = export_onnx(tiny, tmp_path, exporter="dynamo", normalize=True)
    diffs = check_onnx(tiny, paths, batch_sizes=(1, 5), normalize=True)
    assert max(diffs.values()) <= 1e-4, diffs


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["export", "--model", "cpu-vit-32", "--random-init", "--out", str(tmp_path), "--int8",
                   "--towers", "image"])
    assert rc == 0
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["max_abs_diff"]["image"] <= 1e-4
    assert (tmp_path / manifest["towers"]["image"]["int8_file"]).exists()
    out = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in out
    # it says what it wrote: every file, one line each
    for name in ("image_encoder.onnx", "image_encoder.int8.onnx", "export.json"):
        assert f"wrote {tmp_path / name}" in out
    assert cli_main(["export", "--model", "cpu-vit-32", "--random-init", "--out", str(tmp_path / "b"),
                     "--towers", "audio"]) == 2
    assert "expected towers from image, text" in capsys.readouterr().err


def test_export_folder_carries_tokenizer_and_preprocessing(shared, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    vocab = shared(TOKENIZER)
    out = tmp_path / "onnx"
    assert cli_main(["export", "--model", "cpu-vit-32", "--random-init", "--out", str(out), "--towers", "text",
                     "--no-check", "--tokenizer", str(vocab)]) == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["tokenizer"]["context_length"] == 77 and manifest["preprocess"]["image_size"] == 32
    assert json.loads((out / "preprocess.json").read_text())["mean"] == list(OPENAI_MEAN)
    # the folder's vocabulary tokenizes as torchclip does, read by HF's own CLIP tokenizer
    theirs = transformers.CLIPTokenizer(str(out / "tokenizer" / "vocab.json"), str(out / "tokenizer" / "merges.txt"))
    ids = theirs(CAPTIONS[:3])["input_ids"]
    ours = load_tokenizer(vocab)(CAPTIONS[:3])
    for row, ref in zip(ids, ours):
        assert row == ref[: len(row)].tolist()


def test_cli_refuses_to_overwrite_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["export", "--model", "cpu-vit-32", "--random-init", "--out", str(tmp_path), "--towers", "image",
            "--no-check"]
    (tmp_path / "image_encoder.onnx").write_bytes(b"an earlier export")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchclip export: error: ") and "--overwrite" in err and len(err.splitlines()) == 1
    assert (tmp_path / "image_encoder.onnx").read_bytes() == b"an earlier export"
    assert cli_main([*argv, "--overwrite"]) == 0
    assert written_opset(tmp_path / "image_encoder.onnx") == 18


@pytest.mark.parametrize("opset", ["999", "13", "0"])
def test_opset_that_cannot_be_written_is_refused_up_front(opset: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the model named does not exist: the opset is refused before it is looked for
    rc = cli_main(["export", "--model", str(tmp_path / "no-such-model.pt"), "--out", str(tmp_path / "o"),
                   "--opset", opset])
    err = capsys.readouterr().err
    assert rc == 2 and f"ONNX opset {opset} is outside" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="outside"):
        export_onnx(create_model("cpu-vit-32"), tmp_path / "lib", opset=int(opset))


def test_export_json_records_the_opset_written(tmp_path: Path) -> None:
    """export.json used to record the opset asked for (18) while the legacy exporter wrote 17."""
    lo, hi = opset_range("legacy")
    assert lo <= 17 < 18 <= hi
    for asked in ("17", None):
        out = tmp_path / str(asked)
        argv = ["export", "--model", "cpu-vit-32", "--random-init", "--out", str(out), "--towers", "image,text",
                "--no-check"]
        assert cli_main(argv + (["--opset", asked] if asked else [])) == 0
        manifest = json.loads((out / "export.json").read_text())
        want = int(asked) if asked else 18
        for tower in ("image", "text"):
            assert written_opset(out / f"{tower}_encoder.onnx") == want
            assert manifest["towers"][tower]["opset"] == want
        assert manifest["opset"] == want
