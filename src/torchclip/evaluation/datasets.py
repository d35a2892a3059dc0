"""Evaluation datasets: image folders, WebDataset shards and CSV files behind one small class.

Every source becomes an :class:`ImageDataset`: where each image's bytes live, an integer label (-1 when
there is none), the captions of each image, per-sample metadata and the class names. Images stay on disk
(a tar member is a byte range, not a decoded copy) so that a million-image shard costs a few hundred bytes
per sample, and the dataset pickles cheaply into DataLoader workers.

Labels are validated when the dataset is built, not when a metric is computed: an unknown class name, an
image without a label or an empty dataset is an error that names the file and sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..transforms import load_image

__all__ = ["ImageRef", "ImageDataset", "load_image_folder", "load_webdataset", "load_csv", "open_dataset",
           "guess_kind", "decode_image", "expand_braces", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "gif", "tif", "tiff")


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes are: a file, or ``size`` bytes at ``offset`` inside the tar ``path``."""

    path: str
    member: str = ""
    offset: int = -1
    size: int = -1

    def __str__(self) -> str:
        return f"{self.path}::{self.member}" if self.member else self.path


def decode_image(ref: ImageRef) -> Image.Image:
    """The decoded image; any decoding failure is an ``ImageDecodeError`` naming the file (and member)."""
    if not ref.member:
        return load_image(ref.path)
    from ..shards import read_range

    return load_image(read_range(ref.path, ref.offset, ref.size), name=str(ref))  # local or remote shard


@dataclass
class ImageDataset:
    """Images with optional labels, captions and metadata. ``dataset[i]`` is ``(PIL image, label)``.

    ``classnames[label]`` names a label; ``captions[i]`` lists the texts of image ``i`` (retrieval);
    ``meta[i]`` holds whatever the source carried (a WebDataset ``.json``, the CSV row).
    """

    refs: list[ImageRef]
    labels: np.ndarray  # int64 [N], -1 = unlabeled
    captions: list[list[str]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    classnames: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.refs)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} images")
        self.captions = self.captions or [[] for _ in range(n)]
        self.meta = self.meta or [{} for _ in range(n)]
        if len(self.captions) != n or len(self.meta) != n:
            raise ValueError("captions and meta need one entry per image")
        if self.classnames is not None and n and self.labels.max() >= len(self.classnames):
            raise ValueError(f"label {int(self.labels.max())} has no class name ({len(self.classnames)} names)")

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return decode_image(self.refs[i]), int(self.labels[i])

    @property
    def num_classes(self) -> int:
        if self.classnames is None:
            raise ValueError(f"dataset {self.name!r} has no class names")
        return len(self.classnames)

    def require_nonempty(self) -> ImageDataset:
        if not len(self):
            raise ValueError(f"dataset {self.name!r} is empty")
        return self

    def require_labels(self) -> ImageDataset:
        """Raise unless every image has a label and the class names are known (classification)."""
        self.require_nonempty()
        if self.classnames is None or (self.labels < 0).any():
            missing = int((self.labels < 0).sum())
            raise ValueError(f"dataset {self.name!r} needs labels and class names for classification "
                             f"({missing} unlabeled images; set a label key)")
        return self

    def fingerprint(self) -> str:
        """A hash of which images, in which order, with their files' sizes and modification times.

        Labels and captions are not part of it: image features depend only on the pixels, so one feature
        cache serves every labelling of the same images.
        """
        h = hashlib.sha256()
        files = sorted({r.path for r in self.refs})
        index = {p: i for i, p in enumerate(files)}
        for p in files:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        for r in self.refs:
            h.update(f"{index[r.path]}:{r.member}:{r.offset}:{r.size};".encode())
        return h.hexdigest()

    def subset(self, indices: Iterable[int] | np.ndarray, name: str | None = None) -> ImageDataset:
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return ImageDataset([self.refs[i] for i in idx], self.labels[idx], [self.captions[i] for i in idx],
                            [self.meta[i] for i in idx], self.classnames, self.name if name is None else name)

    def relabel(self, key: str, classnames: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> ImageDataset:
        """The same images labelled by metadata field ``key`` (e.g. ``category``); samples whose value is in
        ``exclude`` are dropped. Without ``classnames`` the sorted distinct values become the classes."""
        values = [_meta_value(m, key, str(r)) for m, r in zip(self.meta, self.refs)]
        keep = [i for i, v in enumerate(values) if str(v) not in set(exclude)]
        kept = self.subset(keep)
        kept.labels, kept.classnames = _encode_labels([values[i] for i in keep], classnames, exclude,
                                                      [str(self.refs[i]) for i in keep])
        return kept

    def drop_classes(self, names: Sequence[str]) -> ImageDataset:
        """Without the samples of classes ``names`` (e.g. the emoji ``Component`` category), labels
        renumbered over the remaining classes. Naming a class the dataset lacks is an error."""
        if not names:
            return self
        if self.classnames is None:
            raise ValueError(f"dataset {self.name!r} has no class names to drop")
        unknown = sorted(set(names) - set(self.classnames))
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; the dataset's classes: {self.classnames[:20]}")
        kept_names = [c for c in self.classnames if c not in set(names)]
        remap = np.array([kept_names.index(c) if c in kept_names else -1 for c in self.classnames] + [-1])
        keep = np.flatnonzero((self.labels < 0) | (remap[self.labels] >= 0))
        out = self.subset(keep)
        out.labels = np.where(out.labels >= 0, remap[out.labels], -1)
        out.classnames = kept_names
        return out

    @staticmethod
    def concat(parts: Sequence[ImageDataset], name: str = "") -> ImageDataset:
        """Several datasets as one; labelled parts must share their class names."""
        if not parts:
            raise ValueError("nothing to concatenate")
        names = {tuple(p.classnames) if p.classnames is not None else None for p in parts}
        if len(names) > 1:
            raise ValueError("cannot concatenate datasets with different class names")
        return ImageDataset([r for p in parts for r in p.refs], np.concatenate([p.labels for p in parts]),
                            [c for p in parts for c in p.captions], [m for p in parts for m in p.meta],
                            parts[0].classnames, name or "+".join(p.name for p in parts))


def _meta_value(meta: dict[str, Any], key: str, where: str) -> Any:
    if key not in meta:
        raise ValueError(f"{where}: no field {key!r} to label by (fields: {', '.join(sorted(meta)) or 'none'})")
    return meta[key]


def _encode_labels(values: Sequence[Any], classnames: Sequence[str] | None, exclude: Sequence[str],
                   where: Sequence[str]) -> tuple[np.ndarray, list[str] | None]:
    """Map raw label values (class names or integer ids, None = unlabeled) to int ids and class names."""
    if classnames is not None:
        classnames = [c for c in classnames if c not in set(exclude)]
        if len(set(classnames)) != len(classnames):
            raise ValueError("duplicate class names")
    present = [v for v in values if v is not None]
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present)
    if present and ints:
        labels = np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)
        if classnames is not None and labels.max() >= len(classnames):
            i = int(labels.argmax())
            raise ValueError(f"{where[i]}: label {labels[i]} but only {len(classnames)} class names")
        return labels, list(classnames) if classnames is not None else None
    names = list(classnames) if classnames is not None else sorted({str(v) for v in present})
    index = {c: i for i, c in enumerate(names)}
    labels = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v is None:
            continue
        if str(v) not in index:
            raise ValueError(f"{where[i]}: unknown class name {str(v)!r}; known: {', '.join(names[:20])}"
                             + (" ..." if len(names) > 20 else ""))
        labels[i] = index[str(v)]
    return labels, names


def _split_captions(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_image_folder(root: str | os.PathLike[str], classnames: Sequence[str] | None = None) -> ImageDataset:
    """``root/<class>/<image>``: one class per subfolder, classes in sorted folder order (torchvision's
    ``ImageFolder`` convention). ``classnames`` fixes the order and rejects folders it does not name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    refs, values = [], []
    for folder in folders:
        for p in sorted((root / folder).rglob("*")):
            if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                refs.append(ImageRef(str(p)))
                values.append(folder)
    if not refs:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root}")
    labels, names = _encode_labels(values, classnames, (), [r.path for r in refs])
    return ImageDataset(refs, labels, classnames=names, name=root.name)


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    f = tar.extractfile(m)
    return f.read().decode("utf-8") if f is not None else ""


def _field(sample: dict[str, Any], key: str, where: str) -> Any:
    """``json:category`` reads a field of the ``.json`` member; ``cls`` / ``txt`` read a member's text."""
    ext, _, sub = key.partition(":")
    if ext not in sample:
        return None
    value = sample[ext]
    if not sub:
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: member .{ext} is not a JSON object, so {key!r} cannot be read")
    return value.get(sub)


def expand_braces(pattern: str) -> Sequence[str]:
    """WebDataset shard lists: ``a-{000..003}.tar`` (zero-padded ranges) and ``{x,y}.tar`` (alternatives),
    expanded lazily by :func:`torchclip.shards.expand`; a string without braces is itself."""
    from ..shards import expand

    return expand([pattern])


def load_webdataset(shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                    label_key: str | None = None, caption_key: str | None = "txt",
                    classnames: Sequence[str] | None = None, exclude_classes: Sequence[str] = (),
                    image_exts: Sequence[str] = IMAGE_EXTENSIONS) -> ImageDataset:
    """Samples of WebDataset tar shards, grouped by key (the member name up to the basename's first dot).

    ``label_key``: ``cls`` (an int or a class name in ``<key>.cls``) or ``json:<field>``; ``caption_key``:
    ``txt`` (one caption per line) or ``json:<field>`` (a string or a list of captions). Shards may be given
    as a list or as one ``a.tar::b.tar`` string (OpenCLIP's syntax). The ``.json`` member, when present,
    becomes the sample's metadata, so ``relabel`` can switch to another field later.
    """
    if isinstance(shards, (str, os.PathLike)):
        shards = [p for part in str(shards).split("::") for p in expand_braces(part)]
    refs: list[ImageRef] = []
    values: list[Any] = []
    captions: list[list[str]] = []
    metas: list[dict[str, Any]] = []
    where: list[str] = []
    exts = {e.lower() for e in image_exts}
    from ..shards import ShardError, is_local, local_path, open_shard

    for shard in map(str, shards):
        if is_local(shard) and not os.path.isfile(local_path(shard)):
            raise FileNotFoundError(f"shard {shard} does not exist")
        samples: dict[str, dict[str, Any]] = {}
        # One streaming pass (local files, http(s), s3://, ...): members are read in order, images only
        # located; they are fetched by offset when decoded.
        try:
            stream = open_shard(shard)
        except ShardError as e:
            raise FileNotFoundError(str(e)) from e
        with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                stem, dot, ext = base.partition(".")
                if not dot or base.startswith("."):
                    continue
                s = samples.setdefault(os.path.join(d, stem), {})
                ext = ext.lower()
                if ext in exts:
                    s.setdefault("__image__", ImageRef(shard, m.name, m.offset_data, m.size))
                elif ext == "json":
                    try:
                        s[ext] = json.loads(_read_member(tar, m))
                    except ValueError as e:  # UnicodeDecodeError too
                        raise ValueError(f"{shard}: sample {os.path.join(d, stem)}: bad .json ({e})") from None
                elif m.size < 1 << 20:
                    s[ext] = _read_member(tar, m).strip()
        for key, s in samples.items():
            if "__image__" not in s:
                continue
            here = f"{shard}::{key}"
            label = _field(s, label_key, here) if label_key else None
            if label_key and label is None:
                raise ValueError(f"{here}: no label under {label_key!r}")
            if isinstance(label, str) and label.strip().lstrip("-").isdigit() and label_key.split(":")[0] == "cls":
                label = int(label)
            if label is not None and str(label) in set(exclude_classes):
                continue
            cap = _field(s, caption_key, here) if caption_key else None
            caps = _split_captions(cap) if isinstance(cap, str) else [str(c) for c in cap] if cap else []
            refs.append(s["__image__"])
            values.append(label)
            captions.append(caps)
            meta = dict(s["json"]) if isinstance(s.get("json"), dict) else {}
            meta["__key__"] = key
            metas.append(meta)
            where.append(here)
    if not refs:
        raise ValueError(f"no samples with an image ({', '.join(sorted(exts))}) in {', '.join(map(str, shards))}")
    if label_key:
        labels, names = _encode_labels(values, classnames, exclude_classes, where)
    else:
        labels, names = np.full(len(refs), -1, dtype=np.int64), list(classnames) if classnames else None
    name = "+".join(Path(s).stem for s in map(str, shards))
    return ImageDataset(refs, labels, captions, metas, names, name)


def load_csv(path: str | os.PathLike[str], *, image_col: str = "filepath", label_col: str | None = None,
             caption_col: str | None = None, classnames: Sequence[str] | None = None,
             sep: str = ",") -> ImageDataset:
    """A CSV (or TSV with ``sep='\\t'``) with an image-path column and a label and/or caption column.

    Relative paths are relative to the CSV's folder. Rows naming the same image are one image with several
    captions (the COCO layout), so retrieval counts a hit on any of them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    order: dict[str, int] = {}
    values: list[Any] = []
    captions: list[list[str]] = []
    metas: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        cols = reader.fieldnames or []
        for col in (image_col, label_col, caption_col):
            if col is not None and col not in cols:
                raise ValueError(f"{path}: no column {col!r} (columns: {', '.join(cols)})")
        for row in reader:
            img = str((path.parent / row[image_col]).resolve()) if not os.path.isabs(row[image_col]) else row[image_col]
            if img not in order:
                order[img] = len(order)
                label = row[label_col] if label_col else None
                values.append(int(label) if label is not None and label.strip().isdigit() else label)
                captions.append([])
                metas.append(dict(row))
            if caption_col and row[caption_col].strip():
                captions[order[img]].append(row[caption_col].strip())
    if not order:
        raise ValueError(f"{path}: no rows")
    refs = [ImageRef(p) for p in order]
    where = [f"{path}: {p}" for p in order]
    if label_col:
        labels, names = _encode_labels(values, classnames, (), where)
    else:
        labels, names = np.full(len(refs), -1, dtype=np.int64), list(classnames) if classnames else None
    return ImageDataset(refs, labels, captions, metas, names, path.stem)


def guess_kind(spec: str | os.PathLike[str]) -> str:
    """``folder`` for a directory, ``wds`` for ``.tar`` shards (``a.tar::b.tar``), ``csv`` for .csv/.tsv."""
    s = str(spec)
    if os.path.isdir(s):
        return "folder"
    if s.endswith(".tar") or "::" in s:
        return "wds"
    if s.lower().endswith((".csv", ".tsv")):
        return "csv"
    raise ValueError(f"cannot tell the dataset kind of {s!r} (a folder, .tar shards or .csv): pass the kind")


def open_dataset(spec: str | os.PathLike[str], kind: str | None = None, **kwargs: Any) -> ImageDataset:
    """Build a dataset from a path, guessing its kind: a folder of class folders, ``.tar`` shards
    (``a.tar::b.tar``), or a ``.csv``/``.tsv`` file. ``kwargs`` go to the matching loader."""
    s = str(spec)
    kind = kind or guess_kind(s)
    if kind == "csv" and s.lower().endswith(".tsv"):
        kwargs.setdefault("sep", "\t")
    loaders: dict[str, Callable[..., ImageDataset]] = {
        "folder": load_image_folder, "wds": load_webdataset, "csv": load_csv}
    if kind not in loaders:
        raise ValueError(f"unknown dataset kind {kind!r}; one of {', '.join(loaders)}")
    return loaders[kind](s, **kwargs)
