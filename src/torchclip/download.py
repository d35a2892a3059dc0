"""Downloading pretrained files: a checksummed, resumable, offline-aware cache.

Checkpoints are hundreds of megabytes to over a gigabyte, fetched over flaky links and loaded on machines
that are often offline (clusters, CI). So this layer

* never exposes a partial or corrupt file: bytes go to ``<file>.part`` and are renamed into place
  (``os.replace``, atomic on one filesystem) only after the SHA-256 matches;
* resumes an interrupted ``.part`` with an HTTP Range request, and copes with servers that ignore Range;
* remembers a verified file's hash keyed by size and mtime, so loading a cached 1 GB file does not rehash it;
* fails with a message that says what to do when the network is unreachable, and never touches the
  network when ``TORCHCLIP_OFFLINE=1``;
* serialises concurrent downloads of one file (e.g. every rank of a DDP job) with a lock file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

try:  # POSIX advisory locks; elsewhere concurrent downloads are simply not serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DownloadError",
    "ChecksumError",
    "cache_dir",
    "download",
    "sha256_file",
    "is_offline",
]

_CHUNK = 1 << 20
_USER_AGENT = "torchclip-downloader"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# What callers may pass: a full digest, or the leading hex digits a release publishes (OpenCLIP's file names).
_EXPECTED_RE = re.compile(r"^[0-9a-f]{8,64}$")
# Errors that mean "the byte stream stopped early" once a response is under way.
_STREAM_ERRORS = (http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class DownloadError(RuntimeError):
    """A file could not be obtained: network unreachable, HTTP error, interrupted transfer, or offline mode."""


class ChecksumError(DownloadError):
    """The downloaded (or cached) bytes do not have the expected SHA-256."""


class _Interrupted(Exception):
    """The transfer started but stopped early; the ``.part`` keeps what arrived, so a retry can resume."""

    def __init__(self, reason: str, progressed: bool) -> None:
        super().__init__(reason)
        self.progressed = progressed


class _Restart(Exception):
    """The ``.part`` cannot be resumed (server sent another range, or it is longer than the file)."""


def is_offline() -> bool:
    """True when ``TORCHCLIP_OFFLINE`` is set to 1/true/yes/on: only cached files may be used."""
    return os.environ.get("TORCHCLIP_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The download cache: ``$TORCHCLIP_CACHE`` if set, else ``~/.cache/torchclip``; created on demand.

    OpenAI's own cache (``~/.cache/clip``) uses the same file names, so pointing ``TORCHCLIP_CACHE`` at it
    reuses files already downloaded by the ``clip`` package.
    """
    env = os.environ.get("TORCHCLIP_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "torchclip"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so memory stays flat for multi-GB files."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _cached_sha256(path: Path) -> str:
    """The file's SHA-256, from the sidecar when size and mtime are unchanged since it was written."""
    side = _sidecar(path)
    key = _stat_key(path)
    try:
        record = json.loads(side.read_text())
        if (record["size"], record["mtime_ns"]) == key and _SHA256_RE.match(record["sha256"]):
            return record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    size, mtime_ns = _stat_key(path)
    with contextlib.suppress(OSError):  # a read-only cache still works, it just rehashes
        tmp = path.with_name(path.name + ".sha256.tmp")
        tmp.write_text(json.dumps({"size": size, "mtime_ns": mtime_ns, "sha256": digest}))
        os.replace(tmp, _sidecar(path))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock so two processes never append to the same ``.part``."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _filename_from_url(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if not name:
        raise ValueError(f"cannot derive a file name from URL {url!r}; pass filename=")
    return name


def _manual_hint(url: str, target: Path, expected: str | None) -> str:
    check = f" (SHA-256 {expected})" if expected else ""
    return (
        f"To use it without network access, download {url} on a machine that has access and put it at\n"
        f"    {target}{check}\n"
        f"torchclip then uses it without going online. Set TORCHCLIP_CACHE to use another cache directory."
    )


def download(
    url: str,
    sha256: str | None,
    filename: str | None = None,
    *,
    progress: bool = True,
    cache: Path | None = None,
    retries: int = 3,
    timeout: float = 30.0,
) -> Path:
    """Return the path of ``<cache>/<filename>`` holding ``url``'s bytes, downloading it if needed.

    A cached file is returned only if its SHA-256 equals ``sha256`` (``None`` skips verification, for
    files without a published hash; a prefix of 8+ hex digits checks the digest's start, for releases that
    publish only that); a corrupt cached file is downloaded again. An interrupted transfer is
    resumed up to ``retries`` times within this call, and the ``.part`` survives a failed call so the next
    call resumes it too. ``timeout`` is per socket operation, in seconds.

    Raises :class:`ChecksumError` when the bytes do not match (the ``.part`` is deleted, since resuming
    would only extend bad data), and :class:`DownloadError` when the file cannot be fetched, including
    when ``TORCHCLIP_OFFLINE=1`` and the file is not cached.
    """
    name = filename if filename is not None else _filename_from_url(url)
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise ValueError(f"filename must be a plain file name, got {name!r}")
    expected = None if sha256 is None else sha256.strip().lower()
    if expected is not None and not _EXPECTED_RE.match(expected):
        raise ValueError(f"sha256 must be 8 to 64 hex digits (a digest or its published prefix), got {sha256!r}")
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name

    with _locked(root / (name + ".lock")):
        if target.is_file():
            if expected is None:
                return target
            found = _cached_sha256(target)
            if found.startswith(expected):
                return target
            if is_offline():
                raise ChecksumError(
                    f"cached file {target} has SHA-256 {found}, expected {expected} (URL {url}), and "
                    f"TORCHCLIP_OFFLINE is set so it cannot be downloaded again.\n"
                    + _manual_hint(url, target, expected)
                )
            warnings.warn(
                f"cached file {target} has SHA-256 {found}, expected {expected}; downloading it again",
                RuntimeWarning,
                stacklevel=2,
            )
        if is_offline():
            raise DownloadError(
                f"{target} is not cached and TORCHCLIP_OFFLINE is set, so torchclip does not use the "
                f"network.\n" + _manual_hint(url, target, expected)
            )
        return _fetch(url, target, expected, progress=progress, retries=retries, timeout=timeout)


def _fetch(
    url: str, target: Path, expected: str | None, *, progress: bool, retries: int, timeout: float
) -> Path:
    part = target.with_name(target.name + ".part")
    failures = 0
    while True:
        try:
            digest = _transfer(url, part, target, expected, progress=progress, timeout=timeout)
            break
        except _Restart:
            part.unlink(missing_ok=True)
            failures += 1
            if failures > retries:
                raise DownloadError(f"could not resume {url}; gave up after {failures} attempts") from None
        except _Interrupted as exc:
            failures += 1
            if failures > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"download of {url} was interrupted {failures} times (last: {exc}). The {have} bytes "
                    f"received are kept in {part}; calling again resumes from there."
                ) from exc
            if not exc.progressed:  # back off only when the last attempt got nowhere
                time.sleep(min(0.5 * failures, 5.0))

    if expected is not None and not digest.startswith(expected):
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"SHA-256 mismatch for {url}: expected {expected}, found {digest}. The download was discarded; "
            f"the file on the server may have changed or the transfer was corrupted."
        )
    os.replace(part, target)
    _write_sidecar(target, digest)
    return target


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); unknown parts -> None."""
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _transfer(
    url: str, part: Path, target: Path, expected: str | None, *, progress: bool, timeout: float
) -> str:
    """One HTTP request that appends to (or restarts) ``part``; returns the SHA-256 of the full ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing left to send: the .part may already be complete (we died before the rename).
            _, total = _parse_content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:
                return sha256_file(part)
            raise _Restart() from exc
        exc.close()
        raise DownloadError(
            f"HTTP {exc.code} {exc.reason} while downloading {url}.\n" + _manual_hint(url, target, expected)
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        host = urllib.parse.urlparse(url).netloc
        raise DownloadError(
            f"could not download {url}: {reason}.\nThis machine seems to be offline, or {host} is "
            f"unreachable.\n" + _manual_hint(url, target, expected)
        ) from exc

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Restart()
            mode = "ab"
        else:
            # 200 to a Range request: the server ignored it and sends the whole file, so start over.
            offset, total, mode = 0, length, "wb"
        hasher = hashlib.sha256()
        if mode == "ab":
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    hasher.update(chunk)
        received = 0
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=target.name,
            disable=not progress,
            leave=False,
        )
        with bar, open(part, mode) as out:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _STREAM_ERRORS as exc:
                    raise _Interrupted(f"{type(exc).__name__}: {exc}", received > 0) from exc
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and offset + received < total:
        raise _Interrupted(f"connection closed after {offset + received} of {total} bytes", received > 0)
    if total is not None and offset + received > total:
        raise _Restart()
    return hasher.hexdigest()
