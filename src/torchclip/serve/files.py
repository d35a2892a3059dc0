"""Serving the indexed images, and nothing else.

Requests never carry a path: an image is asked for by *index row*, and the row's record (written by
``torchclip embed``) says where the file is, relative to the collection root. Even so the resolved file is
checked, because records are just JSON on disk: after resolving symlinks the target must lie inside the
root, be a regular file, be within a size limit and *sniff* as an image (a record pointing at a text file
inside the root is refused too). Tar members are read by their recorded offset and size from a shard that
must itself pass the same checks.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from ..embed.decode import open_image
from ..embed.sources import read_tar_member
from ..transforms import ImageDecodeError

__all__ = ["CollectionFiles", "FileRefused", "sniff_image_type"]

MAX_FILE_BYTES = 64 << 20

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"WEBP", 8, "image/webp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
)


class FileRefused(Exception):
    """The row has no servable image; ``status`` is the HTTP status to answer (403 or 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff_image_type(data: bytes) -> str | None:
    """MIME type from the first bytes, or None: the extension in a record is not evidence of anything."""
    for magic, offset, mime in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if mime == "image/webp" and data[:4] != b"RIFF":
                continue
            return mime
    return None


class CollectionFiles:
    """Row -> image bytes for the records of an index, confined to ``root``."""

    def __init__(self, records: list[dict[str, Any]], root: str | os.PathLike[str] | None,
                 thumb_size: int = 256, cache_items: int = 512) -> None:
        self.records = records
        self.root = Path(os.path.realpath(root)) if root else None
        self.thumb_size = thumb_size
        self._thumbs: OrderedDict[int, bytes] = OrderedDict()
        self._cache_items = cache_items
        self._lock = threading.Lock()

    def _target(self, row: int) -> tuple[Path, dict[str, Any]]:
        if not 0 <= row < len(self.records):
            raise FileRefused(404, f"no row {row}")
        rec = self.records[row]
        source = rec.get("source")
        if self.root is None or not isinstance(source, str) or not source:
            raise FileRefused(404, f"row {row} has no image file")
        # realpath resolves '..' and symlinks; an absolute 'source' replaces the root in join and is then
        # caught by the containment check like any other escape.
        target = Path(os.path.realpath(os.path.join(self.root, source)))
        if os.path.commonpath([self.root, target]) != str(self.root):
            raise FileRefused(403, f"row {row} points outside the collection")
        if not target.is_file():
            raise FileRefused(404, f"row {row}: file missing")
        return target, rec

    def read(self, row: int) -> tuple[bytes, str]:
        """``(bytes, mime type)`` of the row's image; ``FileRefused`` for anything else."""
        target, rec = self._target(row)
        if "offset" in rec:
            size = int(rec.get("size", -1))
            if not 0 <= size <= MAX_FILE_BYTES or int(rec["offset"]) < 0:
                raise FileRefused(404, f"row {row}: bad member size")
            try:
                data = read_tar_member(target, int(rec["offset"]), size)
            except OSError as exc:
                raise FileRefused(404, f"row {row}: {exc}") from None
        else:
            if target.stat().st_size > MAX_FILE_BYTES:
                raise FileRefused(404, f"row {row}: file too large to serve")
            data = target.read_bytes()
        mime = sniff_image_type(data)
        if mime is None:
            raise FileRefused(403, f"row {row} is not an image")
        return data, mime

    def thumbnail(self, row: int) -> bytes:
        """A JPEG at most ``thumb_size`` pixels on its longer side (LRU-cached)."""
        with self._lock:
            if row in self._thumbs:
                self._thumbs.move_to_end(row)
                return self._thumbs[row]
        data, _ = self.read(row)
        try:
            img = open_image(data, name=f"row {row}", draft_size=self.thumb_size // 2)
        except ImageDecodeError as exc:
            raise FileRefused(404, str(exc)) from None
        img.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.BICUBIC)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")  # show transparency as white, as a browser would on this page
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        thumb = buf.getvalue()
        with self._lock:
            self._thumbs[row] = thumb
            while len(self._thumbs) > self._cache_items:
                self._thumbs.popitem(last=False)
        return thumb
