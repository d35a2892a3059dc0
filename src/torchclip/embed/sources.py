"""Where the things to embed come from: an image folder, WebDataset tar shards, a CSV, or a text file.

Every source is a *deterministic stream* of :class:`Item`: the same inputs always give the same items in
the same order. Resuming an interrupted run relies on that (it skips the items already consumed instead of
keeping a list of every id it has seen), and so does serving (an index row points back to its item through
the ``locator`` recorded here).

Sources are lazy: a folder is walked directory by directory, a tar is read member by member and brace
patterns are expanded on demand, so a collection of millions of files never has to be listed in memory
first. Tar shards may live anywhere :mod:`torchclip.shards` opens (local, ``pipe:``, http(s), ``s3://``, ...).

A source can be split across the ranks of a distributed run (:meth:`Source.for_rank`): whole shards per
rank when there are at least as many shards as ranks, else every ``world``-th item. Each item carries an
``order`` key -- its place in the single-process order -- so the ranks' outputs merge back into exactly the
single-process result.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import shards as _shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "Item",
    "Source",
    "open_source",
    "expand_braces",
    "detect_kind",
    "read_tar_member",
]

# Lower-case suffixes treated as images when walking a folder or picking a tar member.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
_TAR_IMAGE_KEYS = tuple(e[1:] for e in IMAGE_EXTENSIONS)
_TEXT_KEYS = ("txt", "text", "caption")


@dataclass(frozen=True)
class Item:
    """One thing to embed.

    ``path`` (a file) or ``data`` (bytes read from a tar member) holds an image; ``text`` holds a text.
    ``locator`` is what gets stored next to the embedding so that the item can be found again later:
    ``{"source": <path relative to the collection root>}`` plus ``offset``/``size`` for tar members.
    """

    id: str
    path: str | None = None
    data: bytes | None = None
    text: str | None = None
    locator: dict[str, Any] = field(default_factory=dict)
    order: tuple[int, int] = (0, 0)  # (shard, item) in the single-process order
    error: str | None = None  # known unusable before decoding (a tar member over the size limit)


def expand_braces(pattern: str) -> Sequence[str]:
    """WebDataset-style shard lists: ``shard-{000..012}.tar`` and ``{a,b}.tar`` (nested, zero-padded), as a
    lazy sequence (:func:`torchclip.shards.expand`).

    Shell expansion does this for the CLI, but not when the pattern is quoted or comes from a config file,
    which is exactly how WebDataset users write it.
    """
    return _shards.expand([pattern])


_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def _is_tar_spec(spec: str) -> bool:
    return spec.startswith("pipe:") or spec.lower().endswith(_TAR_SUFFIXES)


def detect_kind(inputs: Sequence[str], modality: str | None = None) -> str:
    """``folder`` | ``tar`` | ``csv`` | ``lines`` | ``jsonl`` for the given inputs (one folder, one CSV,
    one text file, or tar shards)."""
    if not inputs:
        raise ValueError("no input given")
    if all(_is_tar_spec(p) for p in inputs):
        return "tar"
    if len(inputs) != 1:
        raise ValueError(f"several inputs are only supported for .tar shards, got {list(inputs)}")
    p = inputs[0]
    if os.path.isdir(p):
        return "folder"
    suffix = Path(p).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".txt" or modality == "text":
        return "lines"
    raise ValueError(f"cannot tell what {p!r} is: expected a folder, .tar shards, .csv/.tsv, .txt or .jsonl")


class Source:
    """A deterministic stream of items plus the collection root their locators are relative to.

    Build one with :func:`open_source`. Iterating twice gives the same items; ``skip`` items at the start
    are passed over without decoding anything, and ``after`` (tar shards) resumes right at a recorded item
    without reading the shards before it, which is what makes resuming a run over large shards cheap.
    """

    def __init__(self, kind: str, inputs: list[str], modality: str, root: Path, options: dict[str, Any],
                 rank: int = 0, world_size: int = 1) -> None:
        self.kind = kind
        self.inputs = inputs
        self.modality = modality
        self.root = root
        self.options = options
        self.rank, self.world_size = rank, world_size
        self.shards: Sequence[str] = _shards.expand(inputs) if kind == "tar" else []

    def describe(self) -> dict[str, Any]:
        """What identifies this source in a run's resume signature and in the output metadata."""
        out = {"kind": self.kind, "inputs": self.inputs, "modality": self.modality, "root": str(self.root),
               **{k: v for k, v in self.options.items() if v is not None}}
        if self.world_size > 1:
            out.update(rank=self.rank, world_size=self.world_size)
        return out

    def for_rank(self, rank: int, world_size: int) -> Source:
        """This source's share for one rank of ``world_size`` (see the module docstring)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        return Source(self.kind, self.inputs, self.modality, self.root, self.options, rank, world_size)

    @property
    def by_shard(self) -> bool:
        """Ranks take whole shards (else every ``world``-th item)."""
        return self.kind == "tar" and len(self.shards) >= self.world_size

    def iter(self, skip: int = 0, after: tuple[int, int] | None = None) -> Iterator[Item]:
        """The items, less the first ``skip``; or, with ``after`` (an item's ``order``, tar shards split by
        shard), starting at that item."""
        if after is not None and self.by_shard:
            return self._iter_tar(0, after)
        gen = {
            "folder": self._iter_folder,
            "tar": self._iter_tar,
            "csv": self._iter_csv,
            "lines": self._iter_lines,
            "jsonl": self._iter_jsonl,
        }[self.kind]
        items = gen(skip) if self.kind == "tar" else self._mine(gen(0), skip)
        return items

    def _mine(self, items: Iterator[Item], skip: int) -> Iterator[Item]:
        """Every ``world``-th item (this rank's), less the first ``skip`` of them."""
        n = 0
        for i, item in enumerate(items):
            if i % self.world_size != self.rank:
                continue
            n += 1
            if n > skip:
                yield replace(item, order=(0, i))

    def __iter__(self) -> Iterator[Item]:
        return self.iter()

    def count(self) -> int | None:
        """Number of items, from a metadata-only pass (no image is read): the progress bar's total. None for
        remote shards, which would have to be downloaded to be counted."""
        if self.kind == "tar":
            if not all(_shards.is_local(u) for u in self.inputs):
                return None
            want = _TEXT_KEYS if self.modality == "text" else _TAR_IMAGE_KEYS
            n = g = 0
            for _, url in self._my_shards():
                for _ in _picked(url, want, read=False):
                    n += self.by_shard or g % self.world_size == self.rank
                    g += 1
            return n
        if self.kind == "folder":
            return sum(1 for _ in self._mine(self._iter_folder(0), 0))
        return sum(1 for _ in self.iter())

    # ---- folder --------------------------------------------------------------------------------------

    def _iter_folder(self, skip: int) -> Iterator[Item]:
        n = 0
        root = self.root
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                n += 1
                if n <= skip:
                    continue
                full = os.path.join(dirpath, name)
                rel = Path(os.path.relpath(full, root)).as_posix()
                yield Item(id=rel, path=full, locator={"source": rel})

    # ---- WebDataset tar shards -----------------------------------------------------------------------

    def _my_shards(self) -> Iterator[tuple[int, str]]:
        """(index, url) of the shards this rank reads; all of them when ranks split by item."""
        step, first = (self.world_size, self.rank) if self.by_shard else (1, 0)
        for j in range(first, len(self.shards), step):
            yield j, self.shards[j]

    def _rel(self, url: str) -> str:
        if _shards.is_local(url):
            return Path(os.path.relpath(_shards.local_path(url), self.root)).as_posix()
        return url

    def _iter_tar(self, skip: int, after: tuple[int, int] | None = None) -> Iterator[Item]:
        n = 0  # this rank's items so far
        g = 0  # items of all shards so far (split by item)
        want_text = self.modality == "text"
        want = _TEXT_KEYS if want_text else _TAR_IMAGE_KEYS
        for j, url in self._my_shards():
            if after is not None and j < after[0]:
                continue
            rel = self._rel(url)
            for i, (key, ext, sample) in enumerate(_picked(url, want, read=True)):
                mine = self.by_shard or g % self.world_size == self.rank
                g += 1
                if not mine:
                    continue
                if after is not None:
                    if (j, i) < after:
                        continue
                else:
                    n += 1
                    if n <= skip:
                        continue
                locator: dict[str, Any] = {"source": rel, "member": sample.names.get(ext, f"{key}.{ext}")}
                if ext in sample.where:
                    locator["offset"], locator["size"] = sample.where[ext]
                if ext in sample.oversize:
                    yield Item(id=key, locator=locator, order=(j, i),
                               error=f"{url}: member {locator['member']} is over the "
                                     f"{_shards.MAX_MEMBER_BYTES >> 20} MiB member limit")
                    continue
                data = sample.data.get(ext, b"")
                if want_text:
                    yield Item(id=key, text=data.decode("utf-8", errors="replace").strip(), locator=locator,
                               order=(j, i))
                else:
                    yield Item(id=key, data=data, locator=locator, order=(j, i))

    # ---- CSV / TSV -----------------------------------------------------------------------------------

    def _iter_csv(self, skip: int) -> Iterator[Item]:
        path = Path(self.inputs[0])
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = reader.fieldnames or []
            value_col = self._csv_column(columns, "text_column" if self.modality == "text" else "path_column")
            id_col = self.options.get("id_column")
            if id_col is not None and id_col not in columns:
                raise ValueError(f"{path}: no column {id_col!r} (columns: {columns})")
            for i, row in enumerate(reader):
                if i < skip:
                    continue
                value = row[value_col] or ""
                if self.modality == "text":
                    yield Item(id=row[id_col] if id_col else str(i), text=value, locator={"row": i})
                    continue
                full = value if os.path.isabs(value) else os.path.normpath(os.path.join(path.parent, value))
                rel = Path(os.path.relpath(full, self.root)).as_posix()
                yield Item(id=row[id_col] if id_col else value, path=full, locator={"source": rel})

    def _csv_column(self, columns: list[str], option: str) -> str:
        wanted = self.options.get(option)
        if wanted is not None:
            if wanted not in columns:
                raise ValueError(f"{self.inputs[0]}: no column {wanted!r} (columns: {columns})")
            return wanted
        defaults = ("text", "caption", "title") if option == "text_column" else ("path", "filepath", "file", "image")
        for name in defaults:
            if name in columns:
                return name
        raise ValueError(
            f"{self.inputs[0]}: none of the columns {columns} looks like the {option.split('_')[0]} column; "
            f"name it with --{option.replace('_', '-')}"
        )

    # ---- texts ---------------------------------------------------------------------------------------

    def _iter_lines(self, skip: int) -> Iterator[Item]:
        with open(self.inputs[0], encoding="utf-8") as f:
            n = 0
            for lineno, line in enumerate(f, 1):
                text = line.rstrip("\n").rstrip("\r")
                if not text.strip():
                    continue
                n += 1
                if n <= skip:
                    continue
                yield Item(id=str(lineno), text=text, locator={"line": lineno})

    def _iter_jsonl(self, skip: int) -> Iterator[Item]:
        text_key = self.options.get("text_column") or "text"
        id_key = self.options.get("id_column") or "id"
        with open(self.inputs[0], encoding="utf-8") as f:
            n = 0
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                n += 1
                if n <= skip:
                    continue
                obj = json.loads(line)
                if text_key not in obj:
                    raise ValueError(f"{self.inputs[0]}:{lineno}: no {text_key!r} field")
                yield Item(id=str(obj.get(id_key, lineno)), text=str(obj[text_key]), locator={"line": lineno})


def _picked(url: str, want: Sequence[str], *, read: bool) -> Iterator[tuple[str, str, _shards.TarSample]]:
    """(key, extension, sample) for each sample of a shard holding one of the ``want`` extensions (the first
    of them in that order is the one picked); ``read=False`` reads no member data (counting)."""
    for sample in _shards.iter_tar(url, exts=want if read else ()):
        present = [e for e in want if e in sample.names]
        if present:
            yield sample.key, present[0], sample


def open_source(
    inputs: Sequence[str | os.PathLike[str]],
    modality: str | None = None,
    *,
    path_column: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
) -> Source:
    """A :class:`Source` for a folder, tar shards (brace patterns expanded), a CSV/TSV, or a text file.

    ``modality`` defaults to ``text`` for ``.txt``/``.jsonl`` inputs and ``image`` otherwise; tar shards and
    CSVs can give either (``.txt`` members / a text column).
    """
    specs = [os.fspath(p) for p in inputs]
    if not specs:
        raise ValueError("no input given")
    for spec in specs:  # a plain local input that is not there: say so before guessing what it is
        if _shards.is_local(spec) and "{" not in spec and not os.path.exists(_shards.local_path(spec)):
            raise FileNotFoundError(f"input {spec} does not exist")
    if all(_is_tar_spec(sp) for sp in specs):
        return _open_tar(specs, modality or "image", path_column, text_column, id_column)
    remote = [sp for sp in specs if not _shards.is_local(sp)]
    if remote:
        raise ValueError(f"only .tar shards can be read from URLs or commands, got {remote[0]!r}")
    expanded = _shards.expand(specs)
    if len(expanded) != 1:
        shown = list(expanded[:3]) + (["..."] if len(expanded) > 3 else [])
        raise ValueError(f"several inputs are only supported for .tar shards, got {shown}")
    first = expanded[0]
    if not os.path.exists(first):
        raise FileNotFoundError(f"input {first} does not exist")
    kind = detect_kind([first], modality)
    if modality is None:
        modality = "text" if kind in ("lines", "jsonl") else "image"
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    if kind in ("lines", "jsonl") and modality != "text":
        raise ValueError(f"{first} is a text file: it can only be embedded with modality 'text'")
    resolved = os.path.abspath(first)
    root = Path(resolved) if kind == "folder" else Path(resolved).parent
    options = {"path_column": path_column, "text_column": text_column, "id_column": id_column}
    return Source(kind, [resolved], modality, root, options)


def _open_tar(specs: list[str], modality: str, path_column: str | None, text_column: str | None,
              id_column: str | None) -> Source:
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    inputs = [os.path.abspath(_shards.local_path(sp)) if _shards.is_local(sp) else sp for sp in specs]
    for spec, full in zip(specs, inputs):
        shards = _shards.expand([full])
        if not len(shards):
            raise ValueError(f"{spec!r} names no shard")
        if _shards.is_local(full) and not os.path.exists(shards[0]):
            first = f" (the first shard of {spec})" if "{" in spec else ""
            raise FileNotFoundError(f"input {shards[0]} does not exist{first}")
    local = [i for i in inputs if _shards.is_local(i)]
    # the collection root: the folder holding the local shards (the part of each pattern before any brace)
    dirs = [os.path.dirname(i[: i.index("{")] if "{" in i else i) for i in local]
    root = Path(os.path.commonpath(dirs)) if dirs else Path(".")
    options = {"path_column": path_column, "text_column": text_column, "id_column": id_column}
    return Source("tar", inputs, modality, root, options)


def read_tar_member(shard: str | os.PathLike[str], offset: int, size: int) -> bytes:
    """The bytes of a tar member from its recorded data offset and size (no tar parsing needed); the shard
    may be a path or a URL."""
    return _shards.read_range(os.fspath(shard), offset, size)
