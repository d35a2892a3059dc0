"""Datasets (image folders, WebDataset shards, CSV) and template / class-name loading."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from evalkit import color_image, color_shard, png_bytes, write_folder, write_shard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchclip.evaluation.datasets import (
    ImageDataset,
    load_csv,
    load_image_folder,
    load_webdataset,
    open_dataset,
)
from torchclip.evaluation.templates import (
    TEMPLATE_SETS,
    fill,
    load_classnames,
    load_templates,
    prompt_name,
    resolve_templates,
)
from torchclip.transforms import ImageDecodeError

# ---- templates -------------------------------------------------------------------------------------------


def test_named_sets_and_single_templates() -> None:
    assert resolve_templates("bare") == ("{}",)
    assert resolve_templates("photo") == ("a photo of a {}.",)
    assert len(resolve_templates("ensemble")) >= 10 and all("{}" in t for t in TEMPLATE_SETS["ensemble"])
    assert resolve_templates("an emoji of {}.") == ("an emoji of {}.",)
    assert resolve_templates(["{} x", "y {}"]) == ("{} x", "y {}")
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("no-such-set")
    with pytest.raises(ValueError, match="no '{}'"):
        resolve_templates(["a photo"])


def test_fill_keeps_other_braces() -> None:
    assert fill("{} in {braces}", "a {b}") == "a {b} in {braces}"
    assert prompt_name("animal-mammal") == "animal mammal"
    assert prompt_name("Food & Drink") == "food and drink"


def test_template_and_classname_files(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("# comment\na {}.\n\nthe {}!\n")
    assert load_templates(tmp_path / "t.txt") == ("a {}.", "the {}!")
    (tmp_path / "p.json").write_text(json.dumps({"datasets": {"X": {"classes": ["a", ["b", "bee"]],
                                                                    "templates": ["{}?"]}}}))
    assert resolve_templates(f"{tmp_path / 'p.json'}:X") == ("{}?",)
    assert load_classnames(f"{tmp_path / 'p.json'}:X") == ["a", ["b", "bee"]]
    with pytest.raises(ValueError, match="per-dataset"):
        load_templates(tmp_path / "p.json")
    with pytest.raises(ValueError, match="no key 'Y'"):
        load_templates(f"{tmp_path / 'p.json'}:Y")
    (tmp_path / "c.json").write_text(json.dumps({"categories": ["x", "y"]}))
    assert load_classnames(f"{tmp_path / 'c.json'}:categories") == ["x", "y"]


def test_openai_reference_files(shared: Callable[[str], Path]) -> None:
    imagenet = shared("reference/openai_imagenet_classes_templates.json")
    assert len(load_templates(imagenet)) == 80
    names = load_classnames(imagenet)
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
    per_dataset = shared("reference/openai_prompts_per_dataset.json")
    assert len(load_classnames(f"{per_dataset}:CIFAR10")) == 10
    fer = load_classnames(f"{per_dataset}:FacialEmotionRecognition2013")
    assert any(isinstance(n, list) and len(n) > 1 for n in fer)  # synonym lists survive


# ---- datasets --------------------------------------------------------------------------------------------


def test_image_folder(tmp_path: Path) -> None:
    ds = load_image_folder(write_folder(tmp_path / "f"))
    assert ds.classnames == ["blue", "green", "red"] and len(ds) == 9
    img, label = ds[0]
    assert img.size == (40, 40) and ds.classnames[label] == "blue"
    with pytest.raises(ValueError, match="unknown class name 'red'"):
        load_image_folder(tmp_path / "f", classnames=["blue", "green"])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")


def test_webdataset_labels_captions_meta(tmp_path: Path) -> None:
    shard = color_shard(tmp_path / "s.tar", per_class=2)
    ds = load_webdataset(shard, label_key="json:category", classnames=["red", "green", "blue"])
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.captions[0] == ["a red square", "red"]  # one caption per line
    assert ds.meta[0]["style"] == "flat" and ds.meta[0]["__key__"] == "flat_red_000"
    img, _ = ds[3]
    assert img.getpixel((5, 5))[1] > 150  # green
    by_style = ds.relabel("style")
    assert by_style.classnames == ["flat"] and set(by_style.labels) == {0}
    no_blue = ds.drop_classes(["blue"])
    assert len(no_blue) == 4 and no_blue.classnames == ["red", "green"]
    with pytest.raises(ValueError, match="unknown class name"):
        ds.drop_classes(["purple"])
    with pytest.raises(ValueError, match="unknown class name 'blue'"):
        load_webdataset(shard, label_key="json:category", classnames=["red", "green"])
    with pytest.raises(ValueError, match="no label under 'cls'"):
        load_webdataset(shard, label_key="cls")
    two = load_webdataset(f"{shard}::{shard}", label_key="json:category")
    assert len(two) == 12 and two.classnames == ["blue", "green", "red"]


def test_brace_expansion(tmp_path: Path) -> None:
    from torchclip.evaluation.datasets import expand_braces

    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for i in range(2):
        color_shard(tmp_path / f"s-{i:02d}.tar", per_class=1, style=f"st{i}")
    assert len(load_webdataset(tmp_path / "s-{00..01}.tar")) == 6


def test_webdataset_cls_and_errors(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "c.tar", [{"key": f"k{i}", "color": "red", "cls": i % 2} for i in range(4)])
    ds = load_webdataset(shard, label_key="cls", classnames=["zero", "one"])
    assert ds.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="only 1 class names"):
        load_webdataset(shard, label_key="cls", classnames=["zero"])
    with tarfile.open(tmp_path / "e.tar", "w"):
        pass
    with pytest.raises(ValueError, match="no samples"):
        load_webdataset(tmp_path / "e.tar")
    with pytest.raises(FileNotFoundError):
        load_webdataset(tmp_path / "missing.tar")


def test_corrupt_member_names_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        data = png_bytes(color_image("red", 0))[:40]
        info = tarfile.TarInfo("x.png")
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    ds = load_webdataset(path)
    with pytest.raises(ImageDecodeError, match="x.png"):
        ds[0]


def test_csv_groups_captions_per_image(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=1)
    rows = ["filepath,label,caption", "red/0.png,red,a red thing", "red/0.png,red,crimson",
            "blue/0.png,blue,a blue thing"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path / "d.csv", label_col="label", caption_col="caption")
    assert len(ds) == 2 and ds.captions == [["a red thing", "crimson"], ["a blue thing"]]
    assert ds.classnames == ["blue", "red"] and ds.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no column 'nope'"):
        load_csv(tmp_path / "d.csv", label_col="nope")


def test_fingerprint_tracks_images_not_labels(tmp_path: Path) -> None:
    shard = color_shard(tmp_path / "s.tar", per_class=2)
    a = load_webdataset(shard, label_key="json:category")
    assert a.fingerprint() == a.relabel("style").fingerprint()
    assert a.fingerprint() != a.subset([1, 0, 2, 3, 4, 5]).fingerprint()
    before = a.fingerprint()
    st_ = os.stat(shard)
    os.utime(shard, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # a rewritten shard: stale cache
    assert load_webdataset(shard).fingerprint() != before


def test_empty_and_unlabeled_are_clear_errors(tmp_path: Path) -> None:
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=1))
    with pytest.raises(ValueError, match="needs labels"):
        ds.require_labels()
    with pytest.raises(ValueError, match="is empty"):
        ds.subset([]).require_nonempty()
    with pytest.raises(ValueError, match="cannot tell"):
        open_dataset(tmp_path / "nothing.bin")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["red", "green", "blue"]),
                          st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                                         blacklist_characters="\r\x85"), min_size=1, max_size=12)
                                   .map(str.strip).filter(bool), min_size=1, max_size=3)),
                min_size=1, max_size=6))
def test_webdataset_roundtrip_property(tmp_path: Path, samples: list[tuple[str, list[str]]]) -> None:
    """Whatever labels and captions go into a shard come back, in order, with consistent label ids."""
    path = tmp_path / "p.tar"
    write_shard(path, [{"key": f"s{i:03d}", "color": c, "json": {"category": c, "caps": caps}}
                       for i, (c, caps) in enumerate(samples)])
    ds = load_webdataset(path, label_key="json:category", caption_key="json:caps")
    assert len(ds) == len(samples)
    assert [ds.classnames[y] for y in ds.labels] == [c for c, _ in samples]
    assert ds.captions == [caps for _, caps in samples]
    assert ds.classnames == sorted({c for c, _ in samples})
    keep = np.arange(len(ds))[::2]
    assert ImageDataset.concat([ds.subset(keep), ds.subset(keep)]).labels.tolist() == ds.labels[keep].tolist() * 2


def test_webdataset_over_http_equals_local(tmp_path: Path, served: tuple[Path, str]) -> None:
    """`torchclip eval` reads shards through the one shard opener: a URL gives what the local file gives."""
    import shutil

    root, url = served
    shard = color_shard(tmp_path / "s.tar", per_class=2)
    shutil.copy(shard, root / "s.tar")
    local = load_webdataset(shard, label_key="json:category")
    remote = load_webdataset(f"{url}/s.tar", label_key="json:category")
    assert remote.labels.tolist() == local.labels.tolist() and remote.captions == local.captions
    for i in range(len(local)):
        assert np.array_equal(np.asarray(remote[i][0]), np.asarray(local[i][0]))
    with pytest.raises(FileNotFoundError, match="s-missing.tar"):
        load_webdataset(f"{url}/s-missing.tar", label_key="json:category")
