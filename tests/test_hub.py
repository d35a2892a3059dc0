"""Models on the hub (``hf-hub:org/name``, ``org/name``) through huggingface_hub, against a local hub server.

Never the network: ``tests/hubserver.py`` answers huggingface_hub's file API on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hubserver import HubServer

import torchclip
from torchclip.config import get_preset
from torchclip.download import DownloadError
from torchclip.tokenizer import load_tokenizer

pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants as c

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # torchclip reads it per call; transformers reads constants
        monkeypatch.setattr(c, "ENDPOINT", server.url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TORCHCLIP_OFFLINE", raising=False)
        yield server


def features(model: torchclip.CLIP, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(2, 3, model.image_size, model.image_size, generator=g)
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        ids = tok(["a red square", "a blue circle"])
    else:  # OpenAI's layout, without needing its vocabulary file
        ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73, [49406, 320, 49407] + [0] * 74])
    with torch.no_grad():
        return model.encode_image(px), model.encode_text(ids)


def random_model(name: str = "cpu-vit-32", seed: int = 0) -> torchclip.CLIP:
    torch.manual_seed(seed)
    return torchclip.create_model(name).eval()


def model_with_own_vocabulary(seed: int = 0) -> torchclip.CLIP:
    """A small model trained with its own 600-token BPE vocabulary and 16-token context, as `train` makes."""
    import dataclasses

    from torchclip.bpe_train import train_bpe

    words = ["a red square", "a blue circle", "a green star", "two yellow squares", "one red circle"] * 20
    tok = train_bpe(words, vocab_size=600, context_length=16)
    cfg = get_preset("cpu-vit-32")
    text = dataclasses.replace(cfg.text, vocab_size=tok.vocab_size, context_length=16, sot_id=tok.sot_id,
                               eot_id=tok.eot_id)
    torch.manual_seed(seed)
    model = torchclip.CLIP(cfg.replace(text=text)).eval()
    model.tokenizer = tok
    return model


def assert_same(a: torchclip.CLIP, b: torchclip.CLIP) -> None:
    for x, y in zip(features(a), features(b)):
        assert torch.equal(x, y)


def test_open_clip_layout_repo(hub: HubServer, tmp_path: Path) -> None:
    model = random_model()
    torchclip.save_open_clip(model, tmp_path / "oc")
    hub.add("org/tiny-oc", tmp_path / "oc")
    loaded, preprocess = torchclip.load("hf-hub:org/tiny-oc")
    assert loaded.config.activation == "gelu" and loaded.config == model.config
    assert_same(model, loaded)
    assert preprocess.image_size == model.image_size
    # a second load is served by huggingface_hub's cache: no weights travel again
    before = hub.downloads("open_clip_model.safetensors")
    torchclip.load("hf-hub:org/tiny-oc")
    assert before == 1 and hub.downloads("open_clip_model.safetensors") == 1


def test_transformers_layout_repo_by_plain_id_travels_with_its_vocabulary(hub: HubServer, tmp_path: Path) -> None:
    model = model_with_own_vocabulary()
    torchclip.save_hf(model, tmp_path / "hf")
    hub.add("org/tiny-hf", tmp_path / "hf")
    loaded, _ = torchclip.load("org/tiny-hf")
    assert loaded.config.activation == "gelu" and loaded.config.text.context_length == 16
    assert loaded.tokenizer is not None and loaded.tokenizer.merges == model.tokenizer.merges
    assert_same(model, loaded)
    tok = torchclip.get_tokenizer("hf-hub:org/tiny-hf")
    assert (tok.vocab_size, tok.context_length, tok.merges) == (model.config.text.vocab_size, 16, model.tokenizer.merges)


def test_revisions_pick_the_commit(hub: HubServer, tmp_path: Path) -> None:
    first, second = random_model(seed=1), random_model(seed=2)
    torchclip.save_open_clip(first, tmp_path / "a")
    torchclip.save_open_clip(second, tmp_path / "b")
    old = hub.add("org/model", tmp_path / "a")
    hub.add("org/model", tmp_path / "b")
    assert_same(second, torchclip.load("hf-hub:org/model")[0])
    assert_same(first, torchclip.load("hf-hub:org/model", revision=old)[0])


def test_missing_repo_is_one_clear_error(hub: HubServer) -> None:
    with pytest.raises(DownloadError, match="hf-hub:org/nope: no such repository"):
        torchclip.load("hf-hub:org/nope")


def test_repo_without_clip_files(hub: HubServer) -> None:
    hub.add("org/text-only", {"README.md": b"hello"})
    with pytest.raises(DownloadError, match="neither open_clip_config.json nor config.json"):
        torchclip.load("hf-hub:org/text-only")


def test_environment_endpoint_and_offline_cache(tmp_path: Path) -> None:
    """As a user runs it: HF_ENDPOINT and HF_HUB_CACHE in the environment; then HF_HUB_OFFLINE=1, server gone."""
    model = random_model()
    torchclip.save_open_clip(model, tmp_path / "oc")
    torch.save(features(model), tmp_path / "expected.pt")
    code = textwrap.dedent(f"""
        import torch, torchclip
        m, _ = torchclip.load("hf-hub:org/tiny")
        import test_hub as t
        got = t.features(m)
        exp = torch.load({str(tmp_path / 'expected.pt')!r})
        print(all(torch.equal(a, b) for a, b in zip(got, exp)))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("TORCHCLIP_OFFLINE", None)
    with HubServer() as server:
        server.add("org/tiny", tmp_path / "oc")
        r = subprocess.run([sys.executable, "-c", code], env={**env, "HF_ENDPOINT": server.url},
                           capture_output=True, text=True, timeout=120)
        assert r.stdout.strip().endswith("True"), r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-c", code], env={**env, "HF_ENDPOINT": "http://127.0.0.1:9",
                                                          "HF_HUB_OFFLINE": "1"},
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("True"), r.stderr[-2000:]
    # offline with an empty cache: one error that says what to do
    r = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "1",
                                                          "HF_HUB_CACHE": str(tmp_path / "empty")},
                       capture_output=True, text=True, timeout=120)
    assert "DownloadError" in r.stderr and "not in the cache" in r.stderr, r.stderr[-2000:]


def test_offline_with_nothing_cached(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline .* not in the cache"):
        torchclip.load("hf-hub:org/anything")
    assert not [p for _, p in hub.requests if "/resolve/" in p]  # offline: no file is asked for


HF_QUICKSTART = '''
from PIL import Image
import requests
from transformers import CLIPProcessor, CLIPModel

model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")
processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)

inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)

outputs = model(**inputs)
logits_per_image = outputs.logits_per_image # this is the image-text similarity score
probs = logits_per_image.softmax(dim=1) # we can take the softmax to get the label probabilities
'''


def test_transformers_readme_quickstart(shared, hub: HubServer, served: tuple[Path, str], tmp_path: Path) -> None:
    """transformers' CLIP quick-start, its import line changed, gives transformers' numbers on the same repo.

    The one other change: the COCO image URL points at a local server (no network here).
    """
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("requests")
    from PIL import Image, ImageDraw

    model = torchclip.CLIP(get_preset("cpu-vit-64")).eval()
    tok = load_tokenizer(shared("fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"))
    torchclip.save_hf(model, tmp_path / "hf", tokenizer=tok)
    hub.add("openai/clip-vit-base-patch32", tmp_path / "hf")
    img = Image.new("RGB", (320, 240), (240, 240, 230))
    ImageDraw.Draw(img).ellipse((60, 40, 260, 220), fill=(120, 80, 40))
    root, url = served
    img.save(root / "000000039769.jpg")
    code = HF_QUICKSTART.replace("http://images.cocodataset.org/val2017", url)
    theirs: dict = {}
    exec(compile(code, "<hf-quickstart>", "exec"), theirs)  # noqa: S102 - our own literal
    ours: dict = {}
    exec(compile(code.replace("from transformers import", "from torchclip.compat.transformers import"),  # noqa: S102
                 "<hf-quickstart>", "exec"), ours)
    assert isinstance(theirs["model"], transformers.CLIPModel) and isinstance(ours["model"], torchclip.CLIP)
    assert torch.equal(ours["inputs"]["input_ids"], theirs["inputs"]["input_ids"])
    assert torch.equal(ours["inputs"]["attention_mask"], theirs["inputs"]["attention_mask"])
    torch.testing.assert_close(ours["inputs"]["pixel_values"], theirs["inputs"]["pixel_values"], atol=0.05, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(ours["probs"], theirs["probs"], atol=2e-3, rtol=0)
        px, ids = theirs["inputs"]["pixel_values"], theirs["inputs"]["input_ids"]  # same inputs: same numbers
        torch.testing.assert_close(ours["model"].get_image_features(pixel_values=px),
                                   getattr(out := theirs["model"].get_image_features(pixel_values=px), "pooler_output", out),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(ours["model"].get_text_features(input_ids=ids),
                                   getattr(out := theirs["model"].get_text_features(input_ids=ids), "pooler_output", out),
                                   atol=1e-4, rtol=0)
