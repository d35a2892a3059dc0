"""A model travels with its tokenizer and preprocessing: run folders, torchclip files, OpenCLIP and HF folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainkit import make_shards, tiny_overrides

import torchclip
from torchclip.config import PreprocessConfig
from torchclip.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `torchclip train` run: its own 600-token BPE vocabulary, a 16-token context, 16 px images."""
    root = tmp_path_factory.mktemp("bundle")
    shards = make_shards(root / "data")
    out = root / "run"
    train(TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 2})))
    return out


def ids_for(tok: torchclip.Tokenizer) -> torch.Tensor:
    return tok(["red square", "a blue circle, sample 3"])


def test_run_folder_loads_with_its_vocabulary(run: Path) -> None:
    model, preprocess = torchclip.load(run)
    t = model.config.text
    assert t.context_length == 16 and t.vocab_size < 1000
    tok = torchclip.get_tokenizer(model)
    assert (tok.vocab_size, tok.context_length) == (t.vocab_size, 16)
    assert torchclip.get_tokenizer(run).merges == tok.merges  # the folder alone, weights not read
    assert torchclip.get_tokenizer(run / "model.safetensors").merges == tok.merges
    assert preprocess.image_size == 16
    with torch.no_grad():
        assert model.encode_text(ids_for(tok)).shape == (2, model.config.embed_dim)
    # and a training checkpoint inside the run finds the run's vocabulary too
    ckpt = sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1]
    assert torchclip.get_tokenizer(ckpt).merges == tok.merges


def test_a_single_file_carries_vocabulary_and_preprocessing(run: Path, tmp_path: Path) -> None:
    model, _ = torchclip.load(run)
    model.preprocess_config = PreprocessConfig(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
                                               resize_mode="squash")
    path = torchclip.save(model, tmp_path / "alone.safetensors")
    again, preprocess = torchclip.load(path)  # nothing else in tmp_path
    assert again.tokenizer.merges == model.tokenizer.merges
    assert again.preprocess_config == model.preprocess_config
    assert (preprocess.resize_mode, preprocess.interpolation, preprocess.mean) == ("squash", "bilinear", (0.5,) * 3)
    tok = torchclip.get_tokenizer(path)
    with torch.no_grad():
        assert torch.equal(again.encode_text(ids_for(tok)), model.encode_text(ids_for(tok)))


def test_save_hf_loads_in_clip_processor_with_the_same_ids(run: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model, preprocess = torchclip.load(run)
    torchclip.save_hf(model, tmp_path / "hf")
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path / "hf")
    texts = ["red square", "a blue circle, sample 3"]
    theirs = processor(text=texts, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    ours = torchclip.get_tokenizer(model)(texts)
    assert torch.equal(theirs, ours)
    from PIL import Image

    img = Image.new("RGB", (40, 30), (200, 30, 30))
    px = processor(images=img, return_tensors="pt")["pixel_values"][0]
    assert (px - preprocess(img)).abs().max() < 2e-2  # HF resizes with its own bicubic; same geometry and normalization
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf.get_text_features(input_ids=ours)
        out = getattr(out, "pooler_output", out)  # transformers 5 returns the output object, projected
        torch.testing.assert_close(out, model.encode_text(ours), atol=1e-5, rtol=0)
    # and back: the folder loads in torchclip with the same vocabulary
    again, _ = torchclip.load(tmp_path / "hf")
    assert again.tokenizer.merges == model.tokenizer.merges


def test_hf_preprocessor_config_round_trips(run: Path, tmp_path: Path) -> None:
    model, _ = torchclip.load(run)
    model.preprocess_config = PreprocessConfig(16, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear")
    torchclip.save_hf(model, tmp_path / "hf")
    pp = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pp["image_mean"] == [0.1, 0.2, 0.3] and pp["resample"] == 2 and pp["crop_size"]["height"] == 16
    again, _ = torchclip.load(tmp_path / "hf")
    assert again.preprocess_config == model.preprocess_config


def test_open_clip_folder_carries_vocabulary_and_preprocessing(run: Path, tmp_path: Path) -> None:
    model, _ = torchclip.load(run)
    model.preprocess_config = PreprocessConfig(16, resize_mode="longest")
    torchclip.save_open_clip(model, tmp_path / "oc")
    again, preprocess = torchclip.load(tmp_path / "oc")
    assert again.tokenizer.merges == model.tokenizer.merges and preprocess.resize_mode == "longest"
