"""Checkpoint formats: parity with the shared reference outputs, round trips, HF export, bad files."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import torchclip
from torchclip.checkpoints import read_checkpoint, save_hf, save_openai
from torchclip.formats import CheckpointError, infer_openai_config
from torchclip.torchscript import UnsafeArchiveError, read_torchscript_tensors

FORMATS = {
    "vit-tiny": ["openai_state_dict.pt", "openai_torchscript.pt", "open_clip_epoch_3.pt", "hf"],
    "rn-tiny": ["openai_state_dict.pt", "openai_torchscript.pt", "open_clip_epoch_3.pt"],
}
CASES = [(m, f) for m, fs in FORMATS.items() for f in fs]


def outputs(model: torchclip.CLIP, e: dict) -> dict[str, torch.Tensor]:
    px, ids = torch.from_numpy(e["pixel_values"]), torch.from_numpy(e["input_ids"])
    with torch.no_grad():
        return {
            "image_features": model.encode_image(px),
            "text_features": model.encode_text(ids),
            "logits_per_image": model(px, ids).logits_per_image,
        }


@pytest.mark.parametrize("model_name,fmt", CASES)
def test_every_format_reproduces_reference_outputs(shared, model_name: str, fmt: str) -> None:
    folder = shared(f"fixtures/models/{model_name}")
    expected = dict(np.load(folder / "expected.npz"))
    model, preprocess = torchclip.load(folder / fmt)
    got = outputs(model, expected)
    for key, value in got.items():
        diff = (value - torch.from_numpy(expected[key])).abs().max().item()
        assert diff <= 1e-4, f"{model_name}/{fmt}: {key} differs by {diff}"
    assert preprocess.image_size == model.config.vision.image_size


@pytest.mark.parametrize("model_name", list(FORMATS))
def test_inferred_config_matches_meta(shared, model_name: str) -> None:
    folder = shared(f"fixtures/models/{model_name}")
    meta = json.loads((folder / "meta.json").read_text())["config"]
    cfg = read_checkpoint(folder / "openai_state_dict.pt").config
    assert cfg.embed_dim == meta["embed_dim"]
    v = meta["vision"]
    assert cfg.vision.image_size == v["image_size"] and cfg.vision.width == v["width"]
    assert cfg.vision.layers == (tuple(v["layers"]) if isinstance(v["layers"], list) else v["layers"])
    assert cfg.vision.patch_size == v.get("patch_size")
    t = meta["text"]
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers, cfg.text.vocab_size) == \
        (t["width"], t["heads"], t["layers"], t["vocab_size"])
    assert (cfg.text.sot_id, cfg.text.eot_id) == (t["vocab_size"] - 2, t["vocab_size"] - 1)
    assert cfg.activation == "quick_gelu"


def test_fp16_tensors_are_upcast_and_fp32_kept(shared) -> None:
    path = shared("fixtures/models/vit-tiny/openai_state_dict.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["text_projection"].dtype == torch.float16
    model = torchclip.load_model(path)
    assert model.text.proj.dtype == torch.float32
    assert torch.equal(model.text.proj, raw["text_projection"].float())
    assert torch.equal(model.text.pos_embed, raw["positional_embedding"])  # fp32 stays bit-exact


@pytest.mark.parametrize("model_name", list(FORMATS))
@pytest.mark.parametrize("target", ["file.safetensors", "folder", "openai.pt"])
def test_save_load_round_trip_is_exact(shared, tmp_path: Path, model_name: str, target: str) -> None:
    model = torchclip.load_model(shared(f"fixtures/models/{model_name}/openai_state_dict.pt"))
    path = tmp_path / target
    (save_openai if target == "openai.pt" else torchclip.save)(model, path)
    again = torchclip.load_model(path)
    assert again.config == model.config
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_random_models_round_trip_with_their_own_config(tmp_path: Path) -> None:
    for name in ("cpu-vit-32", "cpu-rn-64"):
        model = torchclip.create_model(name)
        torchclip.save(model, tmp_path / f"{name}.safetensors")
        again = torchclip.load_model(tmp_path / f"{name}.safetensors")
        assert again.config == model.config  # gelu activation and all
        px = torch.randn(2, 3, model.image_size, model.image_size)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model.encode_image(px), again.encode_image(px))
            # Batch 1 takes kernels that round by the weights' alignment: the loaded ones must be aligned too.
            assert torch.equal(model.encode_image(px[:1]), again.encode_image(px[:1]))


def test_hf_export_loads_in_transformers_with_same_outputs(shared, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = shared("fixtures/models/vit-tiny")
    expected = dict(np.load(folder / "expected.npz"))
    model = torchclip.load_model(folder / "openai_torchscript.pt")
    with pytest.warns(UserWarning, match="tokenizer files not written"):  # a 1,000-token test vocabulary
        save_hf(model, tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    px, ids = torch.from_numpy(expected["pixel_values"]), torch.from_numpy(expected["input_ids"])
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=px)
    torch.testing.assert_close(out.logits_per_image, torch.from_numpy(expected["logits_per_image"]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(out.image_embeds, torch.nn.functional.normalize(
        torch.from_numpy(expected["image_features"]), dim=-1), atol=1e-5, rtol=0)
    # and back again
    again = torchclip.load_model(tmp_path / "hf")
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_hf_export_of_resnet_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no ResNet CLIP"):
        save_hf(torchclip.create_model("cpu-rn-64"), tmp_path / "hf")


@pytest.mark.parametrize("fmt", ["openai_state_dict.pt", "openai_torchscript.pt", "hf/model.safetensors"])
def test_truncated_files_name_the_file(shared, tmp_path: Path, fmt: str) -> None:
    src = shared(f"fixtures/models/vit-tiny/{fmt}")
    bad = tmp_path / src.name
    data = src.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises((CheckpointError, ValueError)) as info:
        torchclip.load_model(bad)
    assert str(bad) in str(info.value)


def test_shape_mismatch_names_key_and_shapes(shared, tmp_path: Path) -> None:
    sd = torch.load(shared("fixtures/models/vit-tiny/openai_state_dict.pt"), weights_only=True)
    sd["visual.proj"] = torch.zeros(128, 32)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"'visual.proj' has shape \[128, 32\], expected \[128, 64\]") as info:
        torchclip.load_model(path)
    assert str(path) in str(info.value)


def test_missing_and_foreign_keys(shared, tmp_path: Path) -> None:
    sd = torch.load(shared("fixtures/models/rn-tiny/openai_state_dict.pt"), weights_only=True)
    del sd["visual.layer1.0.bn2.running_var"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing 1 key"):
        torchclip.load_model(tmp_path / "missing.pt")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="required key 'text_projection' is missing"):
        torchclip.load_model(tmp_path / "foreign.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"text_projection": torch.zeros(2, 2), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        torchclip.load_model(path)


def test_torchscript_reader_refuses_foreign_globals(shared, tmp_path: Path) -> None:
    src = shared("fixtures/models/vit-tiny/openai_torchscript.pt")
    evil = tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Evil(), protocol=2)
            zout.writestr(item, data)
    with pytest.raises(UnsafeArchiveError, match="posix.system|os.system"):
        read_torchscript_tensors(evil)


def test_torchscript_reader_drops_non_weight_entries(shared) -> None:
    tensors = read_torchscript_tensors(shared("fixtures/models/vit-tiny/openai_torchscript.pt"))
    assert "attn_mask" in tensors  # present in the archive...
    ckpt = read_checkpoint(shared("fixtures/models/vit-tiny/openai_torchscript.pt"))
    assert ckpt.format == "openai-torchscript"
    assert not any("attn_mask" in k for k in ckpt.state_dict)  # ...but not a weight


def test_logit_scale_of_shape_one_is_accepted(shared, tmp_path: Path) -> None:
    sd = torch.load(shared("fixtures/models/vit-tiny/openai_state_dict.pt"), weights_only=True)
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    torch.save(sd, tmp_path / "ls1.pt")
    assert torchclip.load_model(tmp_path / "ls1.pt").logit_scale.shape == ()


def test_infers_every_released_configuration() -> None:
    from torchclip.config import PRESETS
    from torchclip.formats import torchclip_to_openai
    from torchclip.model import CLIP

    key_counts = {"RN50": 489, "RN101": 795, "RN50x4": 669, "RN50x16": 921, "RN50x64": 1353,
                  "ViT-B/32": 302, "ViT-B/16": 302, "ViT-L/14": 446, "ViT-L/14@336px": 446}
    for name in key_counts:
        with torch.device("meta"):
            sd = torchclip_to_openai(CLIP(PRESETS[name]).state_dict())
        assert len(sd) == key_counts[name], name  # reference §3 key counts
        inferred = infer_openai_config(sd, activation=PRESETS[name].activation)
        assert inferred.replace(source="") == PRESETS[name].replace(source=""), name


def test_preset_without_weights_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="without published weights"):
        torchclip.load("cpu-vit-32")
    with pytest.raises(FileNotFoundError, match="neither a model name"):
        torchclip.load("/nonexistent/model.pt")


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-g-14", "ViT-bigG-14"])
def test_plain_state_dicts_of_wide_head_architectures_get_their_heads(tmp_path: Path, name: str) -> None:
    """Shapes cannot tell head widths: a known architecture with the same shapes decides (H/14: 80 wide)."""
    import dataclasses

    from torchclip.config import get_preset

    ref = get_preset(name)
    assert ref.vision.head_width != 64
    # the real widths and ratios, two blocks deep so the test stays small
    small = ref.replace(vision=dataclasses.replace(ref.vision, layers=2, image_size=56), text=dataclasses.replace(
        ref.text, layers=2, vocab_size=600, sot_id=None, eot_id=None))
    from torchclip.readers import _known_heads

    with pytest.MonkeyPatch.context() as m:
        m.setitem(torchclip.config.PRESETS, "small", small)
        with torch.device("meta"):
            sd = torchclip.CLIP(small).state_dict()
        oa = torchclip.formats.torchclip_to_openai({k: torch.empty(v.shape) for k, v in sd.items()})
        inferred = torchclip.formats.infer_openai_config(oa)
        assert inferred.vision.head_width == 64  # what shapes alone say
        got = _known_heads(inferred, "sd")
        assert (got.vision.heads, got.text.heads) == (small.vision.heads, small.text.heads)
        assert int(got.vision.width * got.vision.mlp_ratio) == int(small.vision.width * small.vision.mlp_ratio)
    # control: with no known architecture of those shapes, 64-wide heads and a warning naming the assumption
    with pytest.warns(torchclip.readers.ArchitectureGuessWarning, match="64-wide heads"):
        assert _known_heads(inferred, "sd").vision.head_width == 64
