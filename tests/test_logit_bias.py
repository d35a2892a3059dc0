"""Models trained with the sigmoid loss carry a learned logit bias (OpenCLIP's ``--siglip`` on a CLIP
architecture writes ``logit_bias``): every format that can hold it loads and saves it, the ones that cannot
refuse such a model in one line, and the open_clip compat call returns it as OpenCLIP's does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchclip
from torchclip.checkpoints import save_hf, save_openai
from torchclip.compat import open_clip
from torchclip.config import from_open_clip, get_preset
from torchclip.formats import CheckpointError, torchclip_to_open_clip_config, torchclip_to_openai

BIAS = -7.25  # a trained value, not the -10 a run starts from


def _biased(name: str = "cpu-vit-32") -> torchclip.CLIP:
    torch.manual_seed(0)
    model = torchclip.CLIP(get_preset(name).replace(init_logit_bias=-10.0)).eval()
    with torch.no_grad():
        model.logit_bias.fill_(BIAS)
    return model


def _inputs(model: torchclip.CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    px = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    return px, torch.tensor([[49406, 320, 1125, 49407] + [0] * 73, [49406, 550, 49407] + [0] * 74])


def test_a_model_without_bias_has_none_and_its_files_stay_as_they_were() -> None:
    model = torchclip.create_model("cpu-vit-32")
    assert model.logit_bias is None and "logit_bias" not in model.state_dict()
    assert "init_logit_bias" not in model.config.to_dict()  # earlier versions read these files
    px, ids = _inputs(model)
    assert model(px, ids).logit_bias is None


def test_forward_returns_the_bias_beside_unbiased_logits() -> None:
    model = _biased()
    px, ids = _inputs(model)
    with torch.no_grad():
        out = model(px, ids)
    assert out.logit_bias is not None and float(out.logit_bias.detach()) == BIAS
    torch.testing.assert_close(out.logits_per_image, out.logit_scale * out.image_embeds @ out.text_embeds.T)


def test_torchclip_and_open_clip_folders_keep_the_bias(tmp_path: Path) -> None:
    model = _biased()
    px, ids = _inputs(model)
    torchclip.save(model, tmp_path / "m.safetensors")
    torchclip.save_open_clip(model, tmp_path / "oc")
    assert json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]["init_logit_bias"] == -10
    for path in (tmp_path / "m.safetensors", tmp_path / "oc"):
        again = torchclip.load_model(path)
        assert again.config == model.config and float(again.logit_bias.detach()) == BIAS
        with torch.no_grad():
            assert torch.equal(again.encode_image(px), model.encode_image(px))


def test_open_clip_training_checkpoint_with_a_bias(tmp_path: Path) -> None:
    """OpenCLIP's trainer writes {'state_dict': {'module.<key>': ...}} with logit_bias of shape [] or [1]."""
    model = _biased()
    sd = {f"module.{k}": v for k, v in torchclip_to_openai(model.state_dict()).items()}
    sd["module.logit_bias"] = sd["module.logit_bias"].reshape(1)
    torch.save({"epoch": 1, "name": "run", "state_dict": sd}, tmp_path / "epoch_1.pt")
    inferred = torchclip.load_model(tmp_path / "epoch_1.pt", activation="gelu")
    assert float(inferred.logit_bias.detach()) == BIAS and inferred.config.init_logit_bias == BIAS
    named = torchclip.create_model("cpu-vit-32", pretrained=tmp_path / "epoch_1.pt")  # the architecture named
    assert float(named.logit_bias.detach()) == BIAS
    # the same file without the bias loads as a plain CLIP (negative control: nothing invents one)
    del sd["module.logit_bias"]
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "plain.pt")
    assert torchclip.load_model(tmp_path / "plain.pt", activation="gelu").logit_bias is None


@pytest.mark.parametrize("save", [save_openai, save_hf], ids=["openai", "hf"])
def test_layouts_without_a_bias_refuse_such_a_model(tmp_path: Path, save) -> None:
    with pytest.raises(CheckpointError, match="no place for a logit bias"):
        save(_biased(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_clip_config_round_trip() -> None:
    config = _biased().config
    oc = torchclip_to_open_clip_config(config)
    assert oc["init_logit_bias"] == -10.0
    assert from_open_clip(oc).replace(source="") == config.replace(source="")
    assert "init_logit_bias" not in torchclip_to_open_clip_config(get_preset("cpu-vit-32"))


@pytest.mark.parametrize("output_dict", [False, True])
def test_open_clip_compat_call_returns_the_bias(tmp_path: Path, output_dict: bool) -> None:
    torchclip.save_open_clip(_biased(), tmp_path / "oc")
    model = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    model.output_dict = output_dict
    px, ids = _inputs(model)
    with torch.no_grad():
        out = model(px, ids)
    bias = out["logit_bias"] if output_dict else out[3]
    assert float(bias.detach()) == BIAS and (len(out) == 4)
    plain = open_clip.create_model("cpu-vit-32").eval()
    plain.output_dict = output_dict
    with torch.no_grad():
        assert len(plain(px, ids)) == 3  # no bias, OpenCLIP's three outputs


def test_training_from_a_sigmoid_loss_model_drops_the_bias(tmp_path: Path) -> None:
    """The trainer's softmax loss never reads the bias: the trained model has none, rather than a stale one."""
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import train
    from torchclip.train.config import TrainConfig

    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    first = tmp_path / "a"
    train(TrainConfig.from_dict(tiny_overrides(shards, first, optim={"steps": 1})))
    start = torchclip.load_model(first / "model.safetensors")
    biased = torchclip.CLIP(start.config.replace(init_logit_bias=-10.0))
    biased.load_state_dict({**start.state_dict(), "logit_bias": torch.tensor(BIAS)})
    biased.tokenizer = start.tokenizer
    torchclip.save(biased, tmp_path / "biased.safetensors")
    assert torchclip.load_model(tmp_path / "biased.safetensors").logit_bias is not None
    cfg = TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "b", optim={"steps": 1},
                                               model={"pretrained": str(tmp_path / "biased.safetensors")},
                                               data={"vocab": str(first / "tokenizer.txt.gz")}))
    train(cfg)
    after = torchclip.load_model(tmp_path / "b" / "model.safetensors")
    assert after.logit_bias is None and after.config.init_logit_bias is None
