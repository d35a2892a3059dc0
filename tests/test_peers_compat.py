"""Against the peers themselves: openai/CLIP's ``clip`` and OpenCLIP's ``open_clip`` installed side by side.

These run in the peers' venv (``.ci/run`` builds it; the main test venv skips them with a reason):

- each peer's README quick-start, run verbatim with only its import line changed, prints the peer's numbers
  on the same weights (served by local servers, never the network);
- OpenCLIP folders written by OpenCLIP load in torchclip with OpenCLIP's features, GELU and QuickGELU, for
  the widths, head widths and MLP ratios of several zoo architectures; and torchclip's folders load in OpenCLIP.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

import torchclip

clip = pytest.importorskip("clip", reason="openai/CLIP's clip package is not installed (the peers' venv has it)")
open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed (the peers' venv has it)")

from hubserver import HubServer  # noqa: E402

OPENAI_QUICKSTART = '''
import torch
import clip
from PIL import Image

device = "cuda" if torch.cuda.is_available() else "cpu"
model, preprocess = clip.load("ViT-B/32", device=device)

image = preprocess(Image.open("CLIP.png")).unsqueeze(0).to(device)
text = clip.tokenize(["a diagram", "a dog", "a cat"]).to(device)

with torch.no_grad():
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)

    logits_per_image, logits_per_text = model(image, text)
    probs = logits_per_image.softmax(dim=-1).cpu().numpy()

print("Label probs:", probs)  # prints: [[0.9927937  0.00421068 0.00299572]]
'''

OPEN_CLIP_QUICKSTART = '''
import torch
from PIL import Image
import open_clip

model, _, preprocess = open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')
model.eval()  # model in train mode by default, impacts some models with BatchNorm or stochastic depth active
tokenizer = open_clip.get_tokenizer('ViT-B-32')

image = preprocess(Image.open("docs/CLIP.png")).unsqueeze(0)
text = tokenizer(["a diagram", "a dog", "a cat"])

with torch.no_grad(), torch.autocast("cuda"):
    image_features = model.encode_image(image)
    text_features = model.encode_text(text)
    image_features /= image_features.norm(dim=-1, keepdim=True)
    text_features /= text_features.norm(dim=-1, keepdim=True)

    text_probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)

print("Label probs:", text_probs)  # prints: [[1., 0., 0.]]
'''


def run(code: str, old: str, new: str) -> dict[str, Any]:
    """Run a quick-start with its import line ``old`` replaced by ``new``; returns its variables."""
    if new != old:
        assert code.count(old) == 1
        code = code.replace(old, new)
    scope: dict[str, Any] = {"__name__": "__quickstart__"}
    exec(compile(code, "<quickstart>", "exec"), scope)  # noqa: S102 - our own literal above
    return scope


def diagram(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (400, 300), "white")
    d = ImageDraw.Draw(img)
    d.rectangle((40, 40, 180, 160), outline="black", width=5)
    d.ellipse((220, 120, 360, 260), fill=(200, 30, 30))
    img.save(path)
    return path


def test_openai_readme_quickstart(tmp_path: Path, served: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    # Small random weights in OpenAI's layout, published under the name the quick-start asks for; each
    # side downloads them from the local server and checks the SHA-256 in the URL.
    torch.manual_seed(0)
    model = clip.model.CLIP(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=128,
                            vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=128,
                            transformer_heads=2, transformer_layers=2)
    clip.model.convert_weights(model)  # fp16, as OpenAI's released files
    src = tmp_path / "ViT-B-32.pt"  # a TorchScript archive, as OpenAI's released files
    model.float()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)), check_trace=False)
    torch.jit.save(traced, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    (root / digest).mkdir()
    shutil.copy(src, root / digest / "ViT-B-32.pt")
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/32", f"{url}/{digest}/ViT-B-32.pt")
    import dataclasses

    from torchclip import pretrained

    entry = pretrained.openai_pretrained("ViT-B/32")
    monkeypatch.setitem(pretrained._REGISTRY, (entry.arch, entry.tag),
                        dataclasses.replace(entry, url=f"{url}/{digest}/ViT-B-32.pt", sha256=digest))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # clip caches under ~/.cache/clip
    cache = tmp_path / "torchclip-cache"
    cache.mkdir()
    shutil.copy(Path(clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", cache)  # the package's own copy
    monkeypatch.setenv("TORCHCLIP_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    diagram(tmp_path / "CLIP.png")

    theirs = run(OPENAI_QUICKSTART, "import clip", "import clip")
    ours = run(OPENAI_QUICKSTART, "import clip", "from torchclip.compat import openai as clip")
    np.testing.assert_allclose(ours["probs"], theirs["probs"], atol=1e-5, rtol=0)
    for name in ("image_features", "text_features", "logits_per_text"):
        torch.testing.assert_close(ours[name], theirs[name], atol=2e-5, rtol=1e-5, msg=name)
    assert ours["probs"].shape == (1, 3) and not np.allclose(ours["probs"], 1 / 3, atol=1e-3)


def test_open_clip_readme_quickstart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c

    # Random ViT-B-32 weights (OpenCLIP's GELU architecture) under the tag's hub repo, on a local hub.
    torch.manual_seed(0)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    sd = {k: v.half() if v.is_floating_point() else v for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}
    torch.save(sd, weights)
    del sd
    cache = tmp_path / "torchclip-cache"
    cache.mkdir()
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", cache)
    monkeypatch.setenv("TORCHCLIP_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    diagram(tmp_path / "docs" / "CLIP.png")
    with HubServer() as hub:
        hub.add("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_pytorch_model.bin": weights.read_bytes()})
        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        theirs = run(OPEN_CLIP_QUICKSTART, "import open_clip", "import open_clip")
        ours = run(OPEN_CLIP_QUICKSTART, "import open_clip", "from torchclip.compat import open_clip")
    torch.testing.assert_close(ours["text_probs"], theirs["text_probs"], atol=1e-5, rtol=0)
    for name in ("image_features", "text_features", "text"):
        torch.testing.assert_close(ours[name], theirs[name], atol=2e-5, rtol=1e-5, msg=name)
    assert ours["model"].config.activation == "gelu"


# Architectures of the zoo, shrunk in depth only: widths, head widths, MLP ratios and patch sizes as there.
ARCHS = {
    "ViT-B-32": {},
    "ViT-B-16-plus-240": {"vision_cfg": {"layers": 2}, "text_cfg": {"layers": 2}},
    "ViT-H-14": {"vision_cfg": {"layers": 1, "image_size": 56}, "text_cfg": {"layers": 1}},
    "ViT-g-14": {"vision_cfg": {"layers": 1, "image_size": 56}, "text_cfg": {"layers": 1}},
    "ViT-bigG-14": {"vision_cfg": {"layers": 1, "image_size": 56}, "text_cfg": {"layers": 1}},
    "RN50x4": {"vision_cfg": {"layers": [1, 1, 1, 1], "image_size": 96}, "text_cfg": {"layers": 1}},
}


def _shrunk_config(name: str) -> dict[str, Any]:
    cfg = json.loads(json.dumps(open_clip.get_model_config(name)))
    for section, values in ARCHS[name].items():
        cfg[section].update(values)
    return cfg


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quickgelu"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_open_clip_folders_load_with_open_clip_features(tmp_path: Path, name: str, quick_gelu: bool) -> None:
    from open_clip.push_to_hf_hub import save_config_for_hf

    cfg = _shrunk_config(name)
    cfg["quick_gelu"] = quick_gelu
    torch.manual_seed(0)
    theirs = open_clip.model.CLIP(**cfg).eval()
    theirs.visual.image_mean, theirs.visual.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # create_model sets them
    folder = tmp_path / "oc"
    folder.mkdir()
    save_config_for_hf(theirs, folder / "open_clip_config.json", cfg)
    torch.save(theirs.state_dict(), folder / "open_clip_pytorch_model.bin")
    ours, preprocess = torchclip.load(folder)
    assert ours.config.activation == ("quick_gelu" if quick_gelu else "gelu")
    assert (preprocess.mean, preprocess.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    size = cfg["vision_cfg"]["image_size"]
    px = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(1, 49406, (3, 77), generator=torch.Generator().manual_seed(2))
    ids[:, 0], ids[:, 9:], ids[:, 8] = 49406, 0, 49407
    with torch.no_grad():
        for a, b in ((ours.encode_image(px), theirs.encode_image(px)), (ours.encode_text(ids), theirs.encode_text(ids))):
            assert (a - b).abs().max() <= 1e-4
        # Control: the same weights under the other activation miss the tolerance by far.
        assert (_flipped(ours).encode_text(ids) - theirs.encode_text(ids)).abs().max() > 1e-3


def _flipped(model: torchclip.CLIP) -> torchclip.CLIP:
    """The same weights under the other activation."""
    config = model.config.replace(activation="gelu" if model.config.activation == "quick_gelu" else "quick_gelu")
    flipped = torchclip.CLIP(config).eval()
    flipped.load_state_dict(model.state_dict())
    return flipped


@pytest.mark.parametrize("name", ["cpu-vit-32", "cpu-rn-64"])
def test_torchclip_open_clip_folders_load_in_open_clip(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    ours = torchclip.create_model(name).eval()
    torchclip.save_open_clip(ours, tmp_path / "oc")
    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    size = ours.image_size
    px = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(px), theirs.encode_image(px), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids), theirs.encode_text(ids), atol=1e-4, rtol=0)


def test_sigmoid_loss_models_of_open_clip_load_with_their_bias(tmp_path: Path) -> None:
    """OpenCLIP's trainer with --siglip builds CLIP(init_logit_bias=-10); its folders and training checkpoints load
    in torchclip with the bias, and the compat call returns what OpenCLIP's does."""
    from open_clip.push_to_hf_hub import save_config_for_hf

    from torchclip.compat import open_clip as compat

    cfg = {**_shrunk_config("ViT-B-32"), "init_logit_bias": -10}  # full size: the name below means it
    torch.manual_seed(0)
    theirs = open_clip.model.CLIP(**cfg).eval()
    theirs.visual.image_mean, theirs.visual.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # create_model sets them
    with torch.no_grad():
        theirs.logit_bias.fill_(-7.25)
    folder = tmp_path / "oc"
    folder.mkdir()
    save_config_for_hf(theirs, folder / "open_clip_config.json", cfg)
    torch.save(theirs.state_dict(), folder / "open_clip_pytorch_model.bin")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()}},
               tmp_path / "epoch_1.pt")
    size = cfg["vision_cfg"]["image_size"]
    px = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73])
    with torch.no_grad():
        want = theirs(px, ids)
        assert len(want) == 4
        for ours in (compat.create_model(f"local-dir:{folder}").eval(),
                     compat.create_model("ViT-B-32", pretrained=str(tmp_path / "epoch_1.pt")).eval()):
            got = ours(px, ids)
            assert len(got) == 4 and float(got[3]) == float(want[3]) == -7.25
            for a, b in zip(got[:3], want[:3]):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # and back: torchclip's OpenCLIP folder of such a model loads in OpenCLIP with its bias
    torchclip.save_open_clip(torchclip.load_model(folder), tmp_path / "back")
    again = open_clip.create_model(f"local-dir:{tmp_path / 'back'}").eval()
    assert float(again.logit_bias) == -7.25


def test_compat_listings_match_open_clip() -> None:
    from torchclip.compat import open_clip as ours

    pairs = set(map(tuple, ours.list_pretrained()))
    assert pairs and pairs <= set(map(tuple, open_clip.list_pretrained()))
    assert set(ours.list_models()) <= set(open_clip.list_models())
    assert ours.list_pretrained(as_str=True)[0].count(":") == 1


def test_openai_listing_matches_clip() -> None:
    from torchclip.compat import openai as ours

    assert ours.available_models() == clip.available_models()



@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_modes_equal_open_clip(resize_mode: str, interpolation: str) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from torchclip.config import PreprocessConfig
    from torchclip.transforms import transform_for

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    theirs = image_transform_v2(PreprocessCfg(size=64, mean=mean, std=std, interpolation=interpolation,
                                              resize_mode=resize_mode), is_train=False)
    ours = transform_for(PreprocessConfig(64, mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode))
    rng = np.random.default_rng(0)
    for w, h in ((200, 120), (90, 300), (64, 64), (40, 30)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = img.filter(ImageFilter.SMOOTH)
        torch.testing.assert_close(ours(img), theirs(img), atol=1e-5, rtol=0, msg=f"{w}x{h}")
