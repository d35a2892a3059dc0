"""The pretrained zoo: registry facts, downloads (local HTTP and hub-like servers), and parity with open_clip.

Three groups:

* registry and download tests that need nothing but torchclip (a local HTTP server, a hub-like server via
  ``HF_ENDPOINT``, a pre-populated HF cache with ``HF_HUB_OFFLINE=1``; never the network);
* ``test_open_clip_*``: the registry against open_clip's own ``list_pretrained()`` and configs, and open_clip
  models saved as state dicts and loaded with ``torchclip.create_model`` (features within 1e-4, the wrong
  activation outside it). They need ``open_clip_torch``, which is not in the test extra: PyPI's torchvision is a
  CUDA build that does not import next to the CPU torch these machines use;
  ``tests/test_peers.py`` runs that group in the peers' venv when this interpreter has no open_clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hubserver import HubServer

import torchclip
from torchclip import pretrained
from torchclip.api import pretrained_models
from torchclip.checkpoints import save_openai
from torchclip.config import OPENAI_MODELS, OPENAI_TWINS, PRESETS, get_preset
from torchclip.download import ChecksumError, DownloadError
from torchclip.model import CLIP
from torchclip.pretrained import EXCLUDED, EXCLUSION_REASONS, Pretrained, get_pretrained

REPO = Path(__file__).resolve().parents[1]
HAVE_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
needs_open_clip = pytest.mark.skipif(
    not HAVE_OPEN_CLIP,
    reason="open_clip_torch is not installed here (not in the test extra: PyPI's torchvision is a CUDA build); "
           "tests/test_peers.py runs these in the peers' venv",
)
TOL = 1e-4


# ---- registry facts (no open_clip needed) -------------------------------------------------------


def test_every_entry_is_a_buildable_preset_with_its_facts() -> None:
    pairs = torchclip.list_pretrained()
    assert len(pairs) == len(set(pairs)) == len(pretrained._ZOO)
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    assert torchclip.list_pretrained(as_str=True)[0] == f"{pairs[0][0]}:{pairs[0][1]}"
    for e in pretrained._ZOO:
        assert e.arch in PRESETS and e.arch not in EXCLUDED, e.name
        assert e.config.activation == e.activation in ("gelu", "quick_gelu"), e.name
        assert e.config.replace(activation="gelu") == get_preset(e.arch).replace(activation="gelu")
        assert e.url or e.hf_hub, e.name
        if e.sha256:
            assert len(e.sha256) in (8, 64) and int(e.sha256, 16) >= 0, e.name
            assert e.sha256 in e.url, e.name  # published in the URL itself
        assert e.source == ("url" if e.url and e.sha256 else "hf-hub" if e.hf_hub else "url"), e.name
        assert e.image_size == get_preset(e.arch).vision.image_size
        assert len(e.mean) == len(e.std) == 3 and e.interpolation in ("bicubic", "bilinear")
        assert e.resize_mode in ("shortest", "longest", "squash")
    assert set(EXCLUDED.values()) <= set(EXCLUSION_REASONS)


def test_names_keep_their_library_meaning_and_tags_their_activation() -> None:
    assert get_preset("ViT-B-32").activation == "gelu"  # OpenCLIP's name
    assert get_preset("ViT-B-32-quickgelu").activation == "quick_gelu"
    assert get_preset("ViT-B/32").activation == "quick_gelu"  # OpenAI's spelling
    assert get_preset("RN50").activation == "gelu"  # OpenCLIP's RN50 text tower is GELU
    for openai_name, twin in OPENAI_TWINS.items():
        assert get_preset(openai_name).replace(source="") == get_preset(twin).replace(source="")
        assert pretrained_models()[openai_name] == pretrained.list_pretrained_tags(twin)
    # OpenAI's weights are QuickGELU under any name; OpenCLIP's LAION-2B ViT-B-32 is GELU.
    for name in ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B/32"):
        assert get_pretrained(name, "openai").config.activation == "quick_gelu"
    assert get_pretrained("ViT-B-32", "laion2b_s34b_b79k").activation == "gelu"
    assert get_pretrained("RN50", "yfcc15m").activation == "quick_gelu"
    assert get_pretrained("ViT-H-14", "dfn5b").resize_mode == "squash"
    assert get_pretrained("ViT-L-14", "laion2b_s32b_b82k").mean == (0.5, 0.5, 0.5)
    assert get_pretrained("ViT-B-32", "LAION2B-S34B-B79K").tag == "laion2b_s34b_b79k"  # OpenCLIP's cleaning
    assert [pretrained.openai_pretrained(n).arch for n in OPENAI_MODELS][:5] == list(OPENAI_MODELS[:5])
    with pytest.raises(KeyError, match="laion2b_s32b_b79k"):
        get_pretrained("ViT-H-14", "openai")
    with pytest.raises(ValueError, match="neither a pretrained tag"):
        torchclip.create_model("ViT-H-14", pretrained="openai")


def test_heads_and_mlp_widths_of_the_big_towers() -> None:
    # Head width is not in a state dict's shapes: these come from the architecture name only.
    expect = {"ViT-H-14": (16, 80, 5120, 16), "ViT-g-14": (16, 88, 6144, 16), "ViT-bigG-14": (16, 104, 8192, 20)}
    for name, (heads, head_width, mlp, text_heads) in expect.items():
        cfg = get_preset(name)
        assert (cfg.vision.heads, cfg.vision.head_width, cfg.text.heads) == (heads, head_width, text_heads)
        with torch.device("meta"):
            m = CLIP(cfg)
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if "c_fc.weight" in k or "fc1.weight" in k}
        assert {s[0] for k, s in shapes.items() if k.startswith("visual")} == {mlp}, name


_B32 = {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}
_BIGG = {"embed_dim": 1280, "quick_gelu": True,
         "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104, "mlp_ratio": 4.9231,
                        "patch_size": 14},
         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 32}}
_RN = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": None},
       "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}


def test_from_open_clip_builds_exact_configs_and_refuses_other_architectures() -> None:
    from torchclip.config import from_open_clip

    def same(a, b) -> bool:
        return a.replace(source="") == b.replace(source="")

    assert same(from_open_clip(_B32), get_preset("ViT-B-32"))
    assert same(from_open_clip({**_B32, "quick_gelu": True}), get_preset("ViT-B/32"))
    assert same(from_open_clip(_BIGG), get_preset("ViT-bigG-14-quickgelu"))
    assert same(from_open_clip(_RN), get_preset("RN50"))
    assert from_open_clip({**_B32, "vision_cfg": {**_B32["vision_cfg"], "image_size": [224, 224]}}).vision.image_size == 224
    # fields at open_clip's defaults are CLIP's architecture; anything else is refused, naming the field
    assert same(from_open_clip({**_B32, "custom_text": False,
                                "vision_cfg": {**_B32["vision_cfg"], "no_ln_pre": False, "pool_type": "tok"}}),
                get_preset("ViT-B-32"))
    bad = [({"vision_cfg": {**_B32["vision_cfg"], "no_ln_pre": True}}, "no_ln_pre"),
           ({"vision_cfg": {**_B32["vision_cfg"], "timm_model_name": "eva02"}}, "timm_model_name"),
           ({"vision_cfg": {**_B32["vision_cfg"], "attentional_pool": True}}, "attentional_pool"),
           ({"vision_cfg": {**_B32["vision_cfg"], "image_size": [224, 256]}}, "image_size"),
           ({"text_cfg": {**_B32["text_cfg"], "pool_type": "last"}}, "pool_type"),
           ({"text_cfg": {**_B32["text_cfg"], "hf_tokenizer_name": "x"}}, "hf_tokenizer_name"),
           ({"text_cfg": {**_B32["text_cfg"], "proj_bias": True}}, "proj_bias"),
           ({"custom_text": True}, "custom_text"), ({"multimodal_cfg": {}}, "multimodal_cfg"),
           ({"vision_cfg": {**_B32["vision_cfg"], "new_knob": 1}}, "new_knob")]
    for change, field_ in bad:
        with pytest.raises(ValueError, match=field_):
            from_open_clip({**_B32, **change}, "cfg.json")


def test_readme_zoo_table_is_generated_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("gen_zoo", REPO / "tools" / "gen_zoo.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["readme", "--check"]) == 0, capsys.readouterr().err


# ---- downloads: local HTTP server, hub-like server, HF cache ---------------------------------------


def _tiny_weights(tmp_path: Path, activation: str) -> tuple[Path, CLIP]:
    """cpu-vit-32 with random weights, saved as an OpenAI-layout state dict (what OpenCLIP releases hold)."""
    torch.manual_seed(0)
    model = torchclip.create_model("cpu-vit-32", activation=activation).eval()
    path = save_openai(model, tmp_path / "weights.pt")
    return path, model


def _register(monkeypatch: pytest.MonkeyPatch, entry: Pretrained) -> None:
    monkeypatch.setitem(pretrained._REGISTRY, (entry.arch, entry.tag), entry)


def _features(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    return _oc_features(model, model.config.vision.image_size, model.config.text.vocab_size,
                        model.config.text.context_length)


def _max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def test_tag_downloads_with_published_prefix_and_builds_the_tags_activation(
        tmp_path: Path, served: tuple[Path, str], cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served
    src, reference = _tiny_weights(tmp_path, "quick_gelu")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    name = f"tiny-quickgelu-{digest[:8]}.pt"  # OpenCLIP's release naming: the digest's first 8 hex digits
    (root / name).write_bytes(src.read_bytes())
    _register(monkeypatch, Pretrained("cpu-vit-32", "demo", "quick_gelu", url=f"{base}/{name}", sha256=digest[:8]))
    assert get_preset("cpu-vit-32").activation == "gelu"  # the tag, not the name, decides
    model = torchclip.create_model("cpu-vit-32", pretrained="demo")
    assert model.config.activation == "quick_gelu"
    assert (cache_dir / name).exists()
    assert _max_diff(_features(model), _features(reference)) == 0.0
    # negative control: the same weights under the name's activation are measurably different
    wrong = torchclip.create_model("cpu-vit-32", pretrained="demo", activation="gelu")
    assert _max_diff(_features(wrong), _features(reference)) > TOL
    # cached: the server may go away
    (root / name).unlink()
    assert torchclip.create_model("cpu-vit-32", pretrained="demo").config.activation == "quick_gelu"


def test_tag_download_refuses_bytes_that_miss_the_published_prefix(
        tmp_path: Path, served: tuple[Path, str], cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served
    src, _ = _tiny_weights(tmp_path, "gelu")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    data = bytearray(src.read_bytes())
    data[-100] ^= 0xFF
    (root / "w.pt").write_bytes(bytes(data))
    _register(monkeypatch, Pretrained("cpu-vit-32", "demo", "gelu", url=f"{base}/w.pt", sha256=digest[:8]))
    with pytest.raises(ChecksumError, match=digest[:8]):
        torchclip.create_model("cpu-vit-32", pretrained="demo")
    assert not (cache_dir / "w.pt").exists() and not (cache_dir / "w.pt.part").exists()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    import huggingface_hub.constants as hf_constants

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # torchclip reads it per call
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield server


def test_hub_entry_downloads_from_a_hub_like_server_then_loads_offline(
        tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    src, reference = _tiny_weights(tmp_path, "gelu")
    # OpenCLIP's layout: this repo has only the pickle, so the safetensors name is tried first and skipped
    hub.add("org/tiny-clip", {"open_clip_pytorch_model.bin": src.read_bytes()})
    _register(monkeypatch, Pretrained("cpu-vit-32", "hubtag", "gelu", hf_hub="org/tiny-clip"))
    model = torchclip.create_model("cpu-vit-32", pretrained="hubtag")
    assert _max_diff(_features(model), _features(reference)) == 0.0
    assert hub.requests[0][1].endswith("/org/tiny-clip/resolve/main/open_clip_model.safetensors")
    # offline: served from the HF cache, no request made
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _max_diff(_features(torchclip.create_model("cpu-vit-32", pretrained="hubtag")),
                     _features(reference)) == 0.0
    assert len(hub.requests) == n
    # a revision that is not cached cannot be fetched offline: one clear error
    with pytest.raises(DownloadError, match="offline"):
        get_pretrained("cpu-vit-32", "hubtag").download(revision="v2")


def test_hub_revision_and_safetensors_preference(tmp_path: Path, hub: HubServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    src, _ = _tiny_weights(tmp_path, "gelu")
    sd = torch.load(src, weights_only=True)
    save_file(sd, tmp_path / "w.safetensors")
    hub.add("org/tiny-clip", {"README.md": b"weights on v2 only"})
    hub.add("org/tiny-clip", {"open_clip_model.safetensors": (tmp_path / "w.safetensors").read_bytes(),
                              "open_clip_pytorch_model.bin": src.read_bytes()}, branch="v2")
    _register(monkeypatch, Pretrained("cpu-vit-32", "hubtag", "gelu", hf_hub="org/tiny-clip"))
    path = get_pretrained("cpu-vit-32", "hubtag").download(revision="v2")
    assert path.name == "open_clip_model.safetensors"
    assert all("/resolve/v2/" in path for _, path in hub.requests)
    with pytest.raises(DownloadError, match="none of"):  # main has neither file
        get_pretrained("cpu-vit-32", "hubtag").download()
    # a repository the hub does not have is one clear error naming it
    _register(monkeypatch, Pretrained("cpu-vit-32", "gone", "gelu", hf_hub="org/gone"))
    with pytest.raises(DownloadError, match="hf-hub:org/gone: no such repository"):
        torchclip.create_model("cpu-vit-32", pretrained="gone")


def test_offline_url_entry_names_the_file_to_place(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")
    entry = get_pretrained("ViT-B-32", "laion400m_e32")
    assert entry.source == "url"
    with pytest.raises(DownloadError, match="vit_b_32-quickgelu-laion400m_e32-46683a32.pt"):
        torchclip.create_model("ViT-B-32", pretrained="laion400m_e32")


# ---- against open_clip itself ------------------------------------------------------------------------


def _open_clip_problems(zoo: tuple[Pretrained, ...], excluded: dict[str, str]) -> list[str]:
    """Every disagreement between torchclip's registry and open_clip's list_pretrained() and configs."""
    import open_clip
    from open_clip.factory import get_model_config
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.pretrained import get_pretrained_cfg

    problems: list[str] = []
    theirs = open_clip.list_pretrained()
    ours = {(e.arch, e.tag): e for e in zoo}
    for arch, tag in theirs:
        cfg = get_model_config(arch)
        entry = ours.get((arch, tag))
        if entry is None:
            reason = excluded.get(arch)
            v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
            evidence = {
                "coca": "multimodal_cfg" in cfg,
                "siglip": "siglip" in arch.lower() and (v.get("timm_pool") == "map" or t.get("hf_model_name")),
                "hf-text-tower": bool(t.get("hf_model_name")),
                "timm-image-tower": bool(v.get("timm_model_name")),
                "clipa": bool(v.get("no_ln_pre")) and v.get("pool_type") == "avg",
                "foreign-tokenizer": bool(t.get("hf_tokenizer_name")) and not t.get("hf_model_name"),
            }
            if not reason or not evidence.get(reason):
                problems.append(f"{arch}:{tag} missing from the registry (exclusion {reason!r} not shown by its config)")
            continue
        pcfg = get_pretrained_cfg(arch, tag)
        want_act = "quick_gelu" if pcfg.get("quick_gelu") or cfg.get("quick_gelu") else "gelu"
        if entry.activation != want_act:
            problems.append(f"{arch}:{tag} activation {entry.activation} vs open_clip {want_act}")
        if (entry.url or "") != pcfg.get("url", ""):
            problems.append(f"{arch}:{tag} url {entry.url} vs {pcfg.get('url')}")
        if (entry.hf_hub or "") != pcfg.get("hf_hub", "").rstrip("/"):
            problems.append(f"{arch}:{tag} hub {entry.hf_hub} vs {pcfg.get('hf_hub')}")
        if entry.url and "openaipublic" in entry.url and entry.sha256 != entry.url.split("/")[-2]:
            problems.append(f"{arch}:{tag} sha256 is not OpenAI's path segment")
        if entry.url and "mlfoundations" in entry.url and not entry.url.endswith(f"-{entry.sha256}.pt") \
                and not entry.url.endswith(f"-{entry.sha256}.pth"):
            problems.append(f"{arch}:{tag} sha256 prefix is not the release file name's")
        for k in ("mean", "std"):
            if tuple(getattr(entry, k)) != tuple(pcfg[k]):
                problems.append(f"{arch}:{tag} {k} {getattr(entry, k)} vs {pcfg[k]}")
        for k in ("interpolation", "resize_mode"):
            if getattr(entry, k) != pcfg[k]:
                problems.append(f"{arch}:{tag} {k} {getattr(entry, k)} vs {pcfg[k]}")
        # the architecture: every knob open_clip sets, compared with torchclip's preset
        mine = get_preset(arch)
        vc, tc = CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])
        dv, dt = CLIPVisionCfg(), CLIPTextCfg()
        for key, dc, default in (("vision_cfg", vc, dv), ("text_cfg", tc, dt)):
            expressed = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size",
                         "context_length", "vocab_size", "heads"}
            extra = [f for f in cfg[key] if f not in expressed and getattr(dc, f) != getattr(default, f)]
            if extra:
                problems.append(f"{arch}: open_clip sets {key} {extra}, which torchclip's presets cannot express")
        layers = tuple(vc.layers) if isinstance(vc.layers, list) else vc.layers
        pairs = [
            ("embed_dim", cfg["embed_dim"], mine.embed_dim),
            ("quick_gelu", "quick_gelu" if cfg.get("quick_gelu") else "gelu", mine.activation),
            ("image_size", vc.image_size, mine.vision.image_size), ("layers", layers, mine.vision.layers),
            ("width", vc.width, mine.vision.width), ("patch_size", vc.patch_size, mine.vision.patch_size),
            ("head_width", vc.head_width, mine.vision.head_width), ("mlp_ratio", vc.mlp_ratio, mine.vision.mlp_ratio),
            ("context_length", tc.context_length, mine.text.context_length),
            ("vocab_size", tc.vocab_size, mine.text.vocab_size), ("text width", tc.width, mine.text.width),
            ("text heads", tc.heads, mine.text.heads), ("text layers", tc.layers, mine.text.layers),
            ("text mlp_ratio", tc.mlp_ratio, mine.text.mlp_ratio), ("pad_id", tc.pad_id, mine.text.pad_id),
        ]
        problems += [f"{arch}: {k} open_clip {a!r} vs torchclip {b!r}" for k, a, b in pairs if a != b]
    extra = set(ours) - set(theirs)
    problems += [f"{a}:{t} is in the registry but not in open_clip" for a, t in sorted(extra)]
    problems += [f"{a} excluded but has no open_clip weights" for a in excluded if a not in {x for x, _ in theirs}]
    return problems


@needs_open_clip
def test_open_clip_registry_matches_list_pretrained_and_configs() -> None:
    problems = _open_clip_problems(pretrained._ZOO, EXCLUDED)
    assert not problems, "\n".join(problems[:20])
    # negative controls: each kind of drift is caught
    zoo = list(pretrained._ZOO)
    i = next(k for k, e in enumerate(zoo) if (e.arch, e.tag) == ("ViT-B-32", "openai"))
    flipped = (*zoo[:i], dataclasses.replace(zoo[i], activation="gelu"), *zoo[i + 1:])
    assert any("activation" in p for p in _open_clip_problems(flipped, EXCLUDED))
    assert any("missing" in p for p in _open_clip_problems(tuple(zoo[:i] + zoo[i + 1:]), EXCLUDED))
    hub = (*zoo[:i], dataclasses.replace(zoo[i], hf_hub="timm/other"), *zoo[i + 1:])
    assert any(" hub " in p for p in _open_clip_problems(hub, EXCLUDED))
    assert any("missing" in p for p in _open_clip_problems(pretrained._ZOO, {**EXCLUDED, "coca_ViT-B-32": "clipa"}))


@needs_open_clip
def test_open_clip_configs_convert_exactly_or_are_refused() -> None:
    import open_clip
    from open_clip.factory import get_model_config

    from torchclip.config import from_open_clip

    for arch in dict.fromkeys(a for a, _ in open_clip.list_pretrained()):
        cfg = get_model_config(arch)
        if arch in EXCLUDED:
            with pytest.raises(ValueError, match="not CLIP's architecture"):
                from_open_clip(cfg, arch)
        else:
            assert from_open_clip(cfg, arch).replace(source="") == get_preset(arch).replace(source=""), arch


def _oc_features(model: torch.nn.Module, size: int, vocab: int, ctx: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=g)
    ids = torch.zeros(2, ctx, dtype=torch.long)
    ids[:, 0] = vocab - 2
    ids[:, 1:6] = torch.randint(1, vocab - 2, (2, 5), generator=g)
    ids[0, 6], ids[1, 4] = vocab - 1, vocab - 1  # EOT, the largest id: both libraries pool there
    ids[1, 5:] = 0
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


@pytest.fixture(scope="module")
def open_clip_b32(tmp_path_factory: pytest.TempPathFactory):
    import open_clip

    torch.manual_seed(0)
    gelu = open_clip.create_model("ViT-B-32").eval()
    quick = open_clip.create_model("ViT-B-32-quickgelu").eval()
    quick.load_state_dict(gelu.state_dict())
    path = tmp_path_factory.mktemp("oc") / "open_clip_vit_b_32.pt"
    torch.save(gelu.state_dict(), path)
    return path, _oc_features(gelu, 224, 49408), _oc_features(quick, 224, 49408)


@needs_open_clip
def test_open_clip_vit_b_32_state_dict_by_name_and_by_tag(open_clip_b32, monkeypatch: pytest.MonkeyPatch) -> None:
    path, gelu, quick = open_clip_b32
    # by name: the name's activation (a state dict cannot tell)
    by_gelu_name = _oc_features(torchclip.create_model("ViT-B-32", pretrained=path), 224, 49408)
    by_quick_name = _oc_features(torchclip.create_model("ViT-B/32", pretrained=path), 224, 49408)
    assert _max_diff(by_gelu_name, gelu) <= TOL
    assert _max_diff(by_quick_name, quick) <= TOL
    assert _max_diff(by_quick_name, gelu) > TOL  # negative control: the wrong activation fails the tolerance
    # by tag: the tag's activation, under the GELU name too
    monkeypatch.setattr(Pretrained, "download", lambda self, **kw: path)
    openai = _oc_features(torchclip.create_model("ViT-B-32", pretrained="openai"), 224, 49408)
    laion = _oc_features(torchclip.create_model("ViT-B-32-quickgelu", pretrained="laion400m_e32"), 224, 49408)
    assert _max_diff(openai, quick) <= TOL < _max_diff(openai, gelu)
    assert _max_diff(laion, quick) <= TOL


@needs_open_clip
def test_open_clip_itself_builds_the_names_gelu_for_a_quickgelu_tag(open_clip_b32, monkeypatch) -> None:
    # Why torchclip lets the tag decide: open_clip builds ("ViT-B-32", "openai") with GELU and only warns.
    import open_clip
    import open_clip.factory

    path, gelu, _ = open_clip_b32
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(path))
    with pytest.warns(UserWarning, match="QuickGELU mismatch"):
        oc = open_clip.create_model("ViT-B-32", pretrained="openai").eval()
    assert _max_diff(_oc_features(oc, 224, 49408), gelu) <= TOL


@needs_open_clip
def test_open_clip_rn50_is_gelu_by_name(tmp_path: Path) -> None:
    # RN50 is an OpenAI name and an OpenCLIP name; create_model follows OpenCLIP (GELU text tower). The
    # reduced ResNet cases below show that the text tower's activation is measurable.
    import open_clip

    torch.manual_seed(0)
    oc = open_clip.create_model("RN50").eval()
    path = tmp_path / "rn50.pt"
    torch.save(oc.state_dict(), path)
    ours = torchclip.create_model("RN50", pretrained=path)
    assert ours.config.activation == "gelu"
    assert _max_diff(_oc_features(ours, 224, 49408), _oc_features(oc, 224, 49408)) <= TOL


# Big towers at their real widths, head widths and MLP ratios; one block per tower and a small vocabulary
# keep them at CPU-test size. (name, image size)
_REDUCED = [("ViT-H-14", 224), ("ViT-g-14", 224), ("ViT-bigG-14-quickgelu", 224), ("ViT-B-16-plus-240", 240),
            ("ViT-H-14-378-quickgelu", 378), ("RN50x4-quickgelu", 288)]


@needs_open_clip
@pytest.mark.parametrize("name,size", _REDUCED)
def test_open_clip_big_towers_reduced_in_depth_match(name: str, size: int, tmp_path: Path) -> None:
    from open_clip.factory import get_model_config
    from open_clip.model import CLIP as OpenClipCLIP

    cfg = get_model_config(name)
    resnet = isinstance(cfg["vision_cfg"]["layers"], list)
    vision_layers = [1, 1, 1, 1] if resnet else 1
    cfg["vision_cfg"]["layers"] = vision_layers
    cfg["text_cfg"].update(layers=1, vocab_size=1000)
    torch.manual_seed(0)
    oc = OpenClipCLIP(**cfg).eval()
    path = tmp_path / "w.pt"
    torch.save(oc.state_dict(), path)
    want = _oc_features(oc, size, 1000)
    base = get_preset(name)
    config = base.replace(vision=dataclasses.replace(base.vision, layers=tuple(vision_layers) if resnet else 1),
                          text=dataclasses.replace(base.text, layers=1, vocab_size=1000, sot_id=None, eot_id=None))
    ours = torchclip.create_model(config, pretrained=path)
    assert _max_diff(_oc_features(ours, size, 1000), want) <= TOL, name
    flipped = "gelu" if config.activation == "quick_gelu" else "quick_gelu"
    wrong = torchclip.create_model(config, pretrained=path, activation=flipped)
    assert _max_diff(_oc_features(wrong, size, 1000), want) > TOL, name
