"""torchclip embed: sources, exactness against image_transform, errors, resume, outputs, draft mode, CLI."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchclip import create_model, image_transform
from torchclip.embed import ModelSpec, ResumeError, embed_source, load_embeddings, open_image, open_source
from torchclip.embed.cli import main as embed_main
from torchclip.embed.runner import encode_texts
from torchclip.embed.sources import expand_braces, read_tar_member
from torchclip.embed.store import EmbeddingWriter
from torchclip.transforms import load_image

TOKENIZER = "fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz"
SPEC = ModelSpec("cpu-vit-32", random_init=True, seed=0)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return SPEC.load_model()


def _image(seed: int, w: int = 48, h: int = 40, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def _folder(root: Path) -> list[Path]:
    """Nine images in assorted modes and formats, one in a sub-folder, plus noise the walk must skip."""
    (root / "sub").mkdir(parents=True)
    specs = [("a.jpg", "RGB"), ("b.png", "RGBA"), ("c.png", "P"), ("d.png", "L"), ("e.webp", "RGB"),
             ("f.bmp", "RGB"), ("sub/g.jpg", "RGB"), ("sub/h.png", "RGB"), ("i.gif", "P")]
    paths = []
    for i, (name, mode) in enumerate(specs):
        _image(i, 40 + 3 * i, 30 + 5 * i, mode).save(root / name)
        paths.append(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"skip me")
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def _reference(model: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    tf = image_transform(model.config.vision.image_size)
    with torch.no_grad():
        x = torch.stack([tf(load_image(p)) for p in paths])
        return model.encode_image(x, normalize=True).numpy()


def test_expand_braces() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_folder_matches_image_transform_exactly(tmp_path: Path, model: torch.nn.Module) -> None:
    paths = _folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    source = open_source([tmp_path / "imgs"])
    assert source.count() == 10
    res = embed_source(source, model, tmp_path / "out", model_spec=SPEC, workers=2, batch_size=4, progress=False)
    assert (res.rows, res.errors, res.resumed_from) == (9, 1, 0)
    emb = load_embeddings(tmp_path / "out")
    assert emb.ids == [p.relative_to(tmp_path / "imgs").as_posix() for p in paths]
    assert emb.vectors.shape == (9, model.config.embed_dim) and emb.vectors.dtype == np.float32
    # Same pixels as image_transform, so the same features (batching only reorders float sums).
    np.testing.assert_allclose(emb.vectors, _reference(model, paths), atol=1e-5)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["broken.jpg"] and "cannot load image" in errors[0]["error"]
    assert emb.meta["model"] == SPEC.to_dict() and emb.meta["count"] == 9
    assert not (tmp_path / "out" / ".work").exists()


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path: Path, model: torch.nn.Module) -> None:
    _folder(tmp_path / "imgs")
    source = open_source([tmp_path / "imgs"])
    embed_source(source, model, tmp_path / "full", workers=0, batch_size=2, part_size=2, progress=False)

    class Stop(Exception):
        pass

    def stop_after_two_parts(writer: EmbeddingWriter) -> None:
        if len(writer.state["parts"]) == 2:
            raise Stop

    with pytest.raises(Stop):
        embed_source(source, model, tmp_path / "out", workers=2, batch_size=2, part_size=2, progress=False,
                     on_commit=stop_after_two_parts)
    state = json.loads((tmp_path / "out" / ".work" / "state.json").read_text())
    assert state["consumed"] == 4 and not (tmp_path / "out" / "meta.json").exists()
    # A crash in the middle of writing the next part leaves a stray file: it must be ignored.
    (tmp_path / "out" / ".work" / "part-000002.npy").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="unfinished run"):
        load_embeddings(tmp_path / "out")
    with pytest.raises(ResumeError, match="different settings"):
        embed_source(source, model, tmp_path / "out", dtype="float16", progress=False)
    res = embed_source(source, model, tmp_path / "out", workers=2, batch_size=3, part_size=2, progress=False)
    assert res.resumed_from == 4 and res.new_items == 5 and res.rows == 9
    a, b = load_embeddings(tmp_path / "full"), load_embeddings(tmp_path / "out")
    assert a.ids == b.ids
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    with pytest.raises(ResumeError, match="already holds finished"):
        embed_source(source, model, tmp_path / "out", progress=False)
    assert embed_source(source, model, tmp_path / "out", overwrite=True, progress=False).resumed_from == 0


def test_resume_refuses_a_changed_input(tmp_path: Path, model: torch.nn.Module) -> None:
    _folder(tmp_path / "imgs")
    source = open_source([tmp_path / "imgs"])

    def stop(writer: EmbeddingWriter) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_source(source, model, tmp_path / "out", workers=0, batch_size=2, part_size=2, progress=False,
                     on_commit=stop)
    (tmp_path / "imgs" / "a.jpg").unlink()  # every later item shifts by one
    with pytest.raises(ResumeError, match="input changed"):
        embed_source(source, model, tmp_path / "out", workers=0, progress=False)


def _write_shard(path: Path, samples: list[tuple[str, Image.Image, str]]) -> dict[str, bytes]:
    blobs = {}
    with tarfile.open(path, "w") as tf:
        for key, img, caption in samples:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", caption.encode()),
                               (f"{key}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            blobs[key] = buf.getvalue()
    return blobs


def test_webdataset_shards_to_safetensors(tmp_path: Path, model: torch.nn.Module) -> None:
    blobs = _write_shard(tmp_path / "s-000.tar", [(f"k{i}", _image(i), f"caption {i}") for i in range(5)])
    blobs |= _write_shard(tmp_path / "s-001.tar", [(f"k{i}", _image(i), f"caption {i}") for i in range(5, 7)])
    source = open_source([str(tmp_path / "s-{000..001}.tar")])
    assert source.kind == "tar" and source.count() == 7
    out = tmp_path / "emb.safetensors"
    res = embed_source(source, model, out, fmt="safetensors", workers=2, batch_size=3, dtype="float16",
                       progress=False)
    assert res.rows == 7
    emb = load_embeddings(out)
    assert emb.ids == [f"k{i}" for i in range(7)] and emb.vectors.dtype == np.float16
    rec = emb.records[6]
    assert rec["source"] == "s-001.tar" and rec["member"] == "k6.jpg"
    assert read_tar_member(tmp_path / rec["source"], rec["offset"], rec["size"]) == blobs["k6"]
    ref = _reference_bytes(model, [blobs[f"k{i}"] for i in range(7)])
    np.testing.assert_allclose(emb.vectors.astype(np.float32), ref, atol=2e-3)  # float16 storage
    # The file is a valid safetensors file for the reference reader too.
    from safetensors.numpy import load_file

    assert load_file(str(out))["embeddings"].shape == (7, model.config.embed_dim)


def _reference_bytes(model: torch.nn.Module, blobs: list[bytes]) -> np.ndarray:
    tf = image_transform(model.config.vision.image_size)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        return model.encode_image(x, normalize=True).numpy()


def test_csv_source_with_parquet_ids(tmp_path: Path, model: torch.nn.Module) -> None:
    pytest.importorskip("pyarrow", reason="parquet ids need pyarrow")
    paths = _folder(tmp_path / "imgs")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "file"])
        for i, p in enumerate(paths[:4]):
            w.writerow([f"id{i}", p.relative_to(tmp_path).as_posix()])
        w.writerow(["missing", "imgs/nope.jpg"])
    source = open_source([tmp_path / "list.csv"], path_column="file", id_column="key")
    res = embed_source(source, model, tmp_path / "out", ids_format="parquet", workers=0, progress=False)
    assert (res.rows, res.errors) == (4, 1)
    emb = load_embeddings(tmp_path / "out")
    assert emb.ids == ["id0", "id1", "id2", "id3"]
    assert emb.records[0]["source"] == paths[0].relative_to(tmp_path).as_posix()
    np.testing.assert_allclose(emb.vectors, _reference(model, paths[:4]), atol=1e-5)


def test_texts(tmp_path: Path, model: torch.nn.Module, shared) -> None:
    from torchclip.tokenizer import load_tokenizer

    tok = load_tokenizer(shared(TOKENIZER))
    texts = ["a photo of a cat", "a dog", "", "an emoji of a red heart " * 30]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    res = embed_source(open_source([tmp_path / "t.txt"]), model, tmp_path / "out", tokenizer=tok, progress=False)
    emb = load_embeddings(tmp_path / "out")
    assert res.rows == 3 and emb.ids == ["1", "2", "4"] and emb.records[1]["text"] == "a dog"
    ref = encode_texts(model, tok, [texts[0], texts[1], texts[3]])  # the long one is cut, EOT kept
    np.testing.assert_allclose(emb.vectors, ref, atol=1e-5)


def _photo(w: int, h: int) -> bytes:
    """A JPEG with photo-like content: gradients, shapes and mild noise (pure noise would be atypical)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    base[(xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2] = (220, 40, 40)
    base += rng.normal(0, 8, base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_draft_mode_decodes_large_jpegs_small_and_keeps_features(tmp_path: Path) -> None:
    big = _photo(1024, 768)
    assert open_image(big).size == (1024, 768)
    drafted = open_image(big, draft_size=64, draft_factor=2.0)
    assert drafted.size == (256, 192)  # 1/4 scale: the shorter side stays >= 2 x 64
    assert open_image(big, draft_size=224, draft_factor=2.0).size == (1024, 768)  # not >= 2x larger: exact
    png = io.BytesIO()
    Image.open(io.BytesIO(big)).save(png, format="PNG")
    assert open_image(png.getvalue(), draft_size=64).size == (1024, 768)  # only JPEGs have a draft mode

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(_photo(1024 + 64 * i, 768))
    model = create_model("cpu-vit-64")
    source = open_source([tmp_path / "imgs"])
    exact = embed_source(source, model, tmp_path / "exact", workers=0, progress=False)
    draft = embed_source(source, model, tmp_path / "draft", workers=0, draft_factor=2.0, progress=False)
    a, b = load_embeddings(exact.out).vectors, load_embeddings(draft.out).vectors
    assert not np.array_equal(a, b)  # it did change the pixels ...
    assert (a * b).sum(axis=1).min() > 0.99  # ... but not the features, by much
    assert load_embeddings(draft.out).meta["draft_factor"] == 2.0


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _folder(tmp_path / "imgs")
    args = [str(tmp_path / "imgs"), "--model", "cpu-vit-32", "--random-init", "--quiet", "--workers", "1"]
    assert embed_main([*args, "--out", str(tmp_path / "e.safetensors")]) == 0
    assert "9 embeddings" in capsys.readouterr().out
    assert load_embeddings(tmp_path / "e.safetensors").meta["model"]["model"] == "cpu-vit-32"
    assert embed_main([*args, "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "already holds finished" in capsys.readouterr().err
    assert embed_main([*args, "--out", str(tmp_path / "d"), "--draft", "--draft-factor", "3", "--ids", "jsonl"]) == 0
    assert load_embeddings(tmp_path / "d").meta["draft_factor"] == 3.0
    assert embed_main([str(tmp_path / "nope"), "--model", "cpu-vit-32", "--random-init", "--out",
                       str(tmp_path / "x")]) == 1


def test_model_spec_finds_the_vocabulary_shipped_with_a_checkpoint(tmp_path: Path) -> None:
    from torchclip.embed.modelspec import find_tokenizer

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-00000050.pt").write_bytes(b"")
    (run / "model.safetensors").write_bytes(b"")
    assert find_tokenizer(str(run / "model.safetensors")) is None
    (run / "tokenizer.txt.gz").write_bytes(b"")
    assert find_tokenizer(str(run / "model.safetensors")) == str(run / "tokenizer.txt.gz")
    assert find_tokenizer(str(run / "checkpoints" / "ckpt-00000050.pt")) == str(run / "tokenizer.txt.gz")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text("{}")
    (hf / "merges.txt").write_text("")
    assert find_tokenizer(str(hf)) == str(hf)
    assert find_tokenizer("ViT-B/32") is None
    spec = ModelSpec(str(run / "model.safetensors"), tokenizer="tok.txt.gz").normalized()
    assert Path(spec.tokenizer).is_absolute() and ModelSpec.from_dict(spec.to_dict()) == spec
