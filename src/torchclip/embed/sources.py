"""Where the things to embed come from: an image folder, WebDataset tar shards, a CSV, or a text file.

Every source is a *deterministic stream* of :class:`Item`: the same inputs always give the same items in
the same order. Resuming an interrupted run relies on that (it skips the items already consumed instead of
keeping a list of every id it has seen), and so does serving (an index row points back to its item through
the ``locator`` recorded here).

Sources are lazy: a folder is walked directory by directory, a tar is read member by member, so a
collection of millions of files never has to be listed in memory first.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def expand_braces(pattern: str) -> list[str]:
    """WebDataset-style shard lists: ``shard-{000..012}.tar`` and ``{a,b}.tar`` (nested, zero-padded).

    Shell expansion does this for the CLI, but not when the pattern is quoted or comes from a config file,
    which is exactly how WebDataset users write it.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        options = body.split(",")
    return [out for opt in options for out in expand_braces(head + opt + tail)]


def detect_kind(inputs: Sequence[str], modality: str | None = None) -> str:
    """``folder`` | ``tar`` | ``csv`` | ``lines`` | ``jsonl`` for the given inputs (one folder, one CSV,
    one text file, or tar shards)."""
    if not inputs:
        raise ValueError("no input given")
    if all(p.endswith(".tar") for p in inputs):
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
    are passed over without reading image bytes (tar members are seeked past), which is what makes resuming
    a run over large shards cheap.
    """

    def __init__(self, kind: str, inputs: list[str], modality: str, root: Path, options: dict[str, Any]) -> None:
        self.kind = kind
        self.inputs = inputs
        self.modality = modality
        self.root = root
        self.options = options

    def describe(self) -> dict[str, Any]:
        """What identifies this source in a run's resume signature and in the output metadata."""
        return {"kind": self.kind, "inputs": self.inputs, "modality": self.modality, "root": str(self.root),
                **{k: v for k, v in self.options.items() if v is not None}}

    def iter(self, skip: int = 0) -> Iterator[Item]:
        gen = {
            "folder": self._iter_folder,
            "tar": self._iter_tar,
            "csv": self._iter_csv,
            "lines": self._iter_lines,
            "jsonl": self._iter_jsonl,
        }[self.kind]
        return gen(skip)

    def __iter__(self) -> Iterator[Item]:
        return self.iter()

    def count(self) -> int:
        """Number of items, from a metadata-only pass (no image is read): the progress bar's total."""
        if self.kind == "tar":
            want = _TEXT_KEYS if self.modality == "text" else _TAR_IMAGE_KEYS
            n = 0
            for shard in self.inputs:
                with tarfile.open(shard, "r:") as tf:
                    n += sum(_pick_member(members, want) is not None for _, members in _tar_samples(tf))
            return n
        if self.kind == "folder":
            return sum(1 for _ in self._iter_folder(0))
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

    def _iter_tar(self, skip: int) -> Iterator[Item]:
        n = 0
        want_text = self.modality == "text"
        for shard in self.inputs:
            rel = Path(os.path.relpath(shard, self.root)).as_posix()
            with tarfile.open(shard, "r:") as tf:
                for key, members in _tar_samples(tf):
                    member = _pick_member(members, _TEXT_KEYS if want_text else _TAR_IMAGE_KEYS)
                    if member is None:
                        continue
                    n += 1
                    if n <= skip:
                        continue
                    locator = {"source": rel, "member": member.name, "offset": member.offset_data,
                               "size": member.size}
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    if want_text:
                        yield Item(id=key, text=data.decode("utf-8", errors="replace").strip(), locator=locator)
                    else:
                        yield Item(id=key, data=data, locator=locator)

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


def _tar_samples(tf: tarfile.TarFile) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """Group consecutive members by WebDataset key (the path up to the first dot of the file name)."""
    key: str | None = None
    group: list[tarfile.TarInfo] = []
    for member in tf:
        if not member.isfile():
            continue
        dirname, base = os.path.split(member.name)
        if base.startswith("."):
            continue
        stem = base.split(".", 1)[0]
        this = f"{dirname}/{stem}" if dirname else stem
        if this != key and group:
            yield key or "", group
            group = []
        key = this
        group.append(member)
    if group:
        yield key or "", group


def _pick_member(members: list[tarfile.TarInfo], extensions: Sequence[str]) -> tarfile.TarInfo | None:
    by_ext = {m.name.rsplit("/", 1)[-1].split(".", 1)[1].lower(): m for m in members if "." in m.name.rsplit("/", 1)[-1]}
    for ext in extensions:
        if ext in by_ext:
            return by_ext[ext]
    return None


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
    expanded = [e for p in inputs for e in expand_braces(os.fspath(p))]
    kind = detect_kind(expanded, modality)
    if modality is None:
        modality = "text" if kind in ("lines", "jsonl") else "image"
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    if kind in ("lines", "jsonl") and modality != "text":
        raise ValueError(f"{expanded[0]} is a text file: it can only be embedded with modality 'text'")
    resolved = [os.path.abspath(p) for p in expanded]
    for p in resolved:
        if not os.path.exists(p):
            raise FileNotFoundError(f"input {p} does not exist")
    if kind == "folder":
        root = Path(resolved[0])
    elif kind == "tar":
        root = Path(os.path.commonpath([os.path.dirname(p) for p in resolved]))
    else:
        root = Path(resolved[0]).parent
    options = {"path_column": path_column, "text_column": text_column, "id_column": id_column}
    return Source(kind, resolved, modality, root, options)


def read_tar_member(shard: str | os.PathLike[str], offset: int, size: int) -> bytes:
    """The bytes of a tar member from its recorded data offset and size (no tar parsing needed)."""
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{shard} is shorter than the recorded member at {offset}+{size}")
    return data
