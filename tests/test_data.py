"""Data streams: shard expansion, tar grouping, skip counters, CSV/TSV, splitting, and exact resumption."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainkit import add, make_shards, png_bytes, sample_members

from torchclip.data import (
    CaptionAugment,
    ContrastiveStream,
    expand_urls,
    get_caption,
    iter_tar,
    load_eval_samples,
)
from torchclip.shards import ShardError
from torchclip.tokenizer import Tokenizer

TOK = Tokenizer([], context_length=32)  # bytes only: needs no vocabulary file


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors gain nothing from two, and on a loaded 2-core box OpenMP's
    spin-waiting threads make each op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stream(source: str, **kw) -> ContrastiveStream:
    args = dict(image_size=16, tokenizer=TOK, batch_size=4, shuffle_buffer=8, seed=3)
    args.update(kw)
    return ContrastiveStream(source, **args)


def _take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def test_expand_urls() -> None:
    assert expand_urls("d/s-{000..002}.tar::x.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar", "x.tar"]
    assert expand_urls("a{1..3}.tar") == ["a1.tar", "a2.tar", "a3.tar"]
    assert expand_urls("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_urls(["p.tar", "q.tar"]) == ["p.tar", "q.tar"]


@given(st.integers(0, 50), st.integers(0, 60), st.integers(1, 4))
def test_expand_ranges_property(lo: int, span: int, width: int) -> None:
    hi = lo + span
    out = expand_urls(f"s-{{{str(lo).zfill(width)}..{hi}}}.tar")
    assert len(out) == span + 1
    assert out[0] == f"s-{str(lo).zfill(width)}.tar"
    assert all(o.startswith("s-") and o.endswith(".tar") for o in out)
    assert [int(o[2:-4]) for o in out] == list(range(lo, hi + 1))


def test_iter_tar_groups_members_and_survives_truncation(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, n_shards=1, per_shard=5)
    path = expand_urls(spec)[0]
    items = list(iter_tar(path))
    assert [it["__key__"] for it in items] == [f"s{i:05d}" for i in range(5)]
    assert set(items[0]) >= {"png", "txt", "json"}
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    counts: dict[str, int] = {}
    partial = list(iter_tar(str(cut), counts, skip_bad=True))
    assert 0 < len(partial) < 5 and counts == {"bad_shard": 1}  # skipping: a cut tar ends early, counted
    got = []
    with pytest.raises(ShardError, match=r"cut\.tar: truncated") as err:
        got.extend(iter_tar(str(cut)))  # by default: an error naming the shard, after the good samples
    assert err.value.url == str(cut) and len(got) == len(partial)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    assert list(iter_tar(str(garbage), counts, skip_bad=True)) == [] and counts["bad_shard"] == 2
    with pytest.raises(ShardError, match=r"garbage\.tar: not a readable tar file"):
        list(iter_tar(str(garbage)))
    with pytest.raises(ShardError, match=r"nope\.tar: does not exist"):
        list(iter_tar(str(tmp_path / "nope.tar")))


def test_broken_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    extra = {
        "bad-image": {"png": b"\x89PNG\r\n\x1a\n garbage", "txt": b"broken"},
        "empty-caption": {"png": png_bytes((1, 2, 3), "square"), "txt": b"   "},
        "no-image": {"txt": b"caption without image"},
        "no-caption": {"png": png_bytes((1, 2, 3), "circle")},
        "truncated-jpg": {"jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 20, "txt": b"cut jpeg"},
    }
    spec = make_shards(tmp_path, n_shards=1, per_shard=6, extra=extra)
    s = _stream(spec, batch_size=11, shuffle_buffer=1)
    b = next(s.iter_stream(0))
    assert b.pixels.shape == (11, 3, 16, 16) and b.ids.shape == (11, 32)
    assert b.skips == {"corrupt_image": 2, "empty_caption": 1, "missing_image": 1, "missing_caption": 1}


def test_caption_from_json_field(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, n_shards=1, per_shard=4)
    raw = next(iter_tar(expand_urls(spec)[0]))
    assert get_caption(raw, "txt").startswith("red square,")
    assert get_caption(raw, "caption") == "a red square"
    assert get_caption({"__key__": "k", "json": b'{"caption": "from json"}'}, "txt") == "from json"


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv(tmp_path: Path, suffix: str) -> None:
    sep = "," if suffix == ".csv" else "\t"
    lines = [f"filepath{sep}title"]
    for i in range(6):
        (tmp_path / f"im{i}.png").write_bytes(png_bytes((10 * i, 0, 0), "square"))
        lines.append(f"im{i}.png{sep}picture {i}")
    lines.append(f"missing.png{sep}no file")
    lines.append(f"im0.png{sep}")
    path = tmp_path / f"data{suffix}"
    path.write_text("\n".join(lines) + "\n")
    s = _stream(str(path), batch_size=6, shuffle_buffer=1)
    b = next(s.iter_stream(0))
    assert b.pixels.shape[0] == 6 and b.skips == {"missing_image": 1, "empty_caption": 1}
    pixels, meta = load_eval_samples(str(path), 16)
    assert pixels.shape == (6, 3, 16, 16) and meta[0]["caption"] == "picture 0"


@pytest.mark.parametrize("n_shards", [1, 4])
def test_streams_partition_an_epoch(tmp_path: Path, n_shards: int) -> None:
    """Fewer shards than streams split by sample, more split by shard; either way an epoch is covered once."""
    spec = make_shards(tmp_path, n_shards=n_shards, per_shard=12 // n_shards)
    seen = []
    for rank in range(2):
        s = _stream(spec, rank=rank, world_size=2, num_workers=1, batch_size=1, shuffle_buffer=1)
        gen = s._raw_items(s.stream_id(0), {})
        seen += [next(gen)["__key__"] for _ in range(6)]
    assert sorted(seen) == [f"s{i:05d}" for i in range(12)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 5), buffer=st.integers(1, 20), cut=st.integers(1, 6), resampled=st.booleans())
def test_resume_from_cursor_continues_exactly(tmp_path_factory: pytest.TempPathFactory, batch: int, buffer: int,
                                              cut: int, resampled: bool) -> None:
    """Batches after resuming at a cursor equal the uninterrupted stream's, augmentations included."""
    spec = make_shards(tmp_path_factory.mktemp("d"), n_shards=3, per_shard=5)
    kw = dict(batch_size=batch, shuffle_buffer=buffer, resampled=resampled,
              caption_augment=CaptionAugment(tag_dropout=0.5, shuffle_tags=True, templates=("a {}",),
                                             template_prob=0.5))
    full = _take(_stream(spec, **kw).iter_stream(0), cut + 3)
    resumed = _take(_stream(spec, start={0: full[cut - 1].cursor}, **kw).iter_stream(0), 3)
    for a, b in zip(full[cut:], resumed):
        assert a.cursor == b.cursor
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.ids, b.ids)


def test_dataloader_workers_resume_round_robin(tmp_path: Path) -> None:
    """Two DataLoader workers: resuming with the saved cursors and rotation gives the same batch sequence."""
    spec = make_shards(tmp_path, n_shards=2, per_shard=10)

    def loader(start: dict[int, int] | None = None, rotate: int = 0) -> torch.utils.data.DataLoader:
        s = _stream(spec, num_workers=2, start=start, rotate=rotate)
        return torch.utils.data.DataLoader(s, batch_size=None, num_workers=2)

    full = _take(iter(loader()), 7)
    cut = 3
    cursors = {}
    for b in full[:cut]:
        cursors[b.stream] = b.cursor
    resumed = _take(iter(loader(cursors, rotate=cut % 2)), 4)
    assert [b.stream for b in resumed] == [b.stream for b in full[cut:]]
    for a, b in zip(full[cut:], resumed):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.ids, b.ids)


@given(st.lists(st.text("abcdefgh ", min_size=1, max_size=8).filter(str.strip), min_size=1, max_size=8),
       st.floats(0, 1), st.booleans(), st.integers(0, 2**32 - 1))
def test_caption_augment_keeps_name_and_only_given_tags(tags: list[str], p: float, shuffle: bool, seed: int) -> None:
    tags = [" ".join(t.split()) for t in tags]
    caption = ", ".join(tags)
    aug = CaptionAugment(tag_dropout=p, shuffle_tags=shuffle)
    out = aug(caption, random.Random(seed))
    parts = out.split(", ")
    assert parts[0] == tags[0]
    assert all(t in tags[1:] for t in parts[1:])
    assert CaptionAugment()(caption, random.Random(seed)) == caption


@given(st.lists(st.text("abcdefgh ", min_size=1, max_size=8).filter(str.strip), min_size=1, max_size=8),
       st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_caption_augment_name_dropout_never_empties(tags: list[str], p: float, seed: int) -> None:
    tags = [" ".join(t.split()) for t in tags]
    out = CaptionAugment(tag_dropout=p, name_dropout=1.0)(", ".join(tags), random.Random(seed))
    parts = out.split(", ")
    assert out and all(t in tags for t in parts)
    if tags[0] not in tags[1:]:
        # the name goes exactly when some other tag survived
        assert (tags[0] in parts) == (parts == [tags[0]])


def test_caption_augment_name_dropout_rate() -> None:
    aug = CaptionAugment(name_dropout=0.3)
    rng = random.Random(0)
    kept = sum(aug("name, a, b", rng).startswith("name") for _ in range(4000))
    assert 0.66 < kept / 4000 < 0.74


def test_png_webp_jpeg_all_decode(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (12, 12), (200, 10, 10))
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        for i, fmt in enumerate(("PNG", "WEBP", "JPEG")):
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            ext = {"PNG": "png", "WEBP": "webp", "JPEG": "jpeg"}[fmt]
            add(tar, f"k{i}.{ext}", buf.getvalue())
            add(tar, f"k{i}.txt", b"red")
        for ext, data in sample_members(0).items():
            add(tar, f"k9.{ext}", data)
    b = next(_stream(str(path), batch_size=4, shuffle_buffer=1).iter_stream(0))
    assert b.pixels.shape[0] == 4 and not b.skips


def test_demo_scenes_hold_out_combinations(tmp_path: Path) -> None:
    from torchclip.demo import COLORS, SHAPES, held_out, write_shard

    held = {(c, s) for c in COLORS for s in SHAPES if held_out(c, s)}
    assert len(held) == 6 and {c for c, _ in held} == set(COLORS) and {s for _, s in held} == set(SHAPES)
    write_shard(tmp_path / "train.tar", 40, seed=0, seen=True)
    write_shard(tmp_path / "test.tar", 20, seed=1, seen=False)
    _, train_meta = load_eval_samples(str(tmp_path / "train.tar"), 16)
    _, test_meta = load_eval_samples(str(tmp_path / "test.tar"), 16)
    assert len(train_meta) == 40 and len(test_meta) == 20
    assert all((m["color"], m["shape"]) not in held for m in train_meta)
    assert all((m["color"], m["shape"]) in held for m in test_meta)
    assert all(m["color"] in m["caption"] and m["shape"] in m["caption"] for m in train_meta)
