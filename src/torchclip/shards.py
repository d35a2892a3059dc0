"""Opening shards wherever they live: one opener for training, evaluation and embedding.

A shard *spec* names one or more tar shards:

* local paths and ``file://`` URLs;
* brace patterns, WebDataset style (``data/shard-{000000..001023}.tar``, ``{a,b}.tar``, several specs joined
  with ``::``), expanded *lazily*: :func:`expand` returns a sequence that computes its ``i``-th name on demand,
  so a pattern of a billion names costs no memory;
* ``pipe:CMD`` -- the shard is the standard output of a shell command (``pipe:aws s3 cp s3://b/x.tar -``);
* ``http://`` / ``https://`` URLs, streamed;
* any fsspec URL (``s3://``, ``gs://``, ``az://``, ...) with credentials from the usual environment (AWS_*
  variables or ``~/.aws``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``); needs the protocol's
  package (``pip install torchclip[remote]`` brings s3fs and HTTP; gcsfs / adlfs for Google / Azure).

:func:`open_shard` returns a sequential binary stream. Transient failures (connection errors, timeouts,
HTTP 408/429/5xx) are retried with exponential backoff, also in the middle of a shard: the stream reopens at
the byte it had reached (an HTTP ``Range`` request, or a seek). Anything else -- a shard that does not exist,
access denied, a command that fails -- is a :class:`ShardError` naming the URL and the cause.

:func:`iter_tar` reads the samples of one shard (members grouped by WebDataset key), transparently
decompressing gzip/bzip2/xz shards with bounded work: a member larger than ``max_member`` is never read into
memory, and a compressed shard that inflates beyond ``MAX_INFLATION`` times its size is refused as a
compression bomb.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import lzma
import os
import random
import re
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

__all__ = [
    "ShardError",
    "ShardList",
    "RetryPolicy",
    "expand",
    "is_local",
    "local_path",
    "open_shard",
    "iter_tar",
    "read_range",
    "MAX_MEMBER_BYTES",
    "MAX_INFLATION",
]

MAX_MEMBER_BYTES = 64 << 20  # one tar member read into memory at most
MAX_INFLATION = 100  # decompressed / compressed bytes a compressed shard may reach ...
INFLATION_FLOOR = 64 << 20  # ... once past this many decompressed bytes
_CHUNK = 1 << 20  # sequential read size for remote streams


class ShardError(OSError):
    """A shard that cannot be read: ``url`` and ``cause`` say which and why."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"{url}: {cause}")
        self.url, self.cause = url, cause


# ---- lazy brace expansion ------------------------------------------------------------------------------------


class _Node:
    size: int

    def get(self, i: int) -> str:
        raise NotImplementedError


@dataclass
class _Lit(_Node):
    text: str
    size: int = 1

    def get(self, i: int) -> str:
        return self.text


@dataclass
class _Range(_Node):
    lo: int
    step: int
    size: int
    width: int

    def get(self, i: int) -> str:
        return str(self.lo + i * self.step).zfill(self.width)


class _Alt(_Node):
    """Alternatives one after the other: ``{a,b{1..2}}`` -> a, b1, b2."""

    def __init__(self, options: list[_Node]) -> None:
        self.options = options
        self.size = sum(o.size for o in options)

    def get(self, i: int) -> str:
        for o in self.options:
            if i < o.size:
                return o.get(i)
            i -= o.size
        raise IndexError(i)


class _Seq(_Node):
    """Concatenation: the index is a mixed-radix number whose last digit belongs to the last part."""

    def __init__(self, parts: list[_Node]) -> None:
        self.parts = parts
        self.size = 1
        for p in parts:
            self.size *= p.size

    def get(self, i: int) -> str:
        out = []
        for p in reversed(self.parts):
            i, r = divmod(i, p.size) if p.size else (i, 0)
            out.append(p.get(r))
        return "".join(reversed(out))


_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


def _matching(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start``, or -1."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _split_top(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for j, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[last:j])
            last = j + 1
    parts.append(body[last:])
    return parts


def _parse(text: str) -> _Node:
    parts: list[_Node] = []
    lit, i = [], 0
    while i < len(text):
        end = _matching(text, i) if text[i] == "{" else -1
        if end < 0:
            lit.append(text[i])
            i += 1
            continue
        body = text[i + 1 : end]
        m = _RANGE.fullmatch(body)
        options = _split_top(body)
        if m is None and len(options) < 2:  # "{x}" is literal, as in bash
            lit.append(text[i])
            i += 1
            continue
        if lit:
            parts.append(_Lit("".join(lit)))
            lit = []
        if m is not None:
            lo_s, hi_s, step_s = m.groups()
            lo, hi = int(lo_s), int(hi_s)
            step = abs(int(step_s)) if step_s and int(step_s) else 1
            step = step if hi >= lo else -step
            width = max(len(lo_s.lstrip("-")), 1) if lo_s.lstrip("-").startswith("0") else 0
            parts.append(_Range(lo, step, abs(hi - lo) // abs(step) + 1, width))
        else:
            parts.append(_Alt([_parse(o) for o in options]))
        i = end + 1
    if lit:
        parts.append(_Lit("".join(lit)))
    return parts[0] if len(parts) == 1 else _Seq(parts)


class ShardList(Sequence[str]):
    """The names a spec expands to, computed on demand (``len``, indexing, iteration; no list is built)."""

    def __init__(self, specs: Sequence[str], label: str) -> None:
        self._root = _Alt([_parse(s) for s in specs])
        self.label = label

    def __len__(self) -> int:
        return self._root.size

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = self._root.size
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"shard {i} of {n}")
        return self._root.get(i)

    def __iter__(self) -> Iterator[str]:
        return (self._root.get(i) for i in range(self._root.size))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (list, tuple, ShardList)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardList({self.label!r}, {len(self)} shards)"


def expand(spec: str | Sequence[str]) -> ShardList:
    """``'a-{000..002}.tar::b.tar'`` -> a lazy ``['a-000.tar', 'a-001.tar', 'a-002.tar', 'b.tar']``.

    A string may join several specs with ``::`` (OpenCLIP's syntax); a sequence is taken part by part.
    Numeric ranges keep the zero padding of the lower bound and may count down or take a step
    (``{0..10..5}``); ``{x,y}`` lists may nest. A ``::`` inside an IPv6 address (``http://[::1]/``) is not
    a separator.
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        parts = [p for p in re.split(r"::(?![^\[]*\])", text) if p]  # not inside an IPv6 literal
        label = text
    else:
        parts = [os.fspath(p) for p in spec]
        label = "::".join(parts)
    return ShardList(parts, label)


# ---- opening ---------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_local(url: str) -> bool:
    """A plain path or ``file://`` URL (read with ``open``), not a command or a remote URL."""
    if url.startswith("pipe:"):
        return False
    m = _SCHEME.match(url)
    return m is None or m.group(1).lower() == "file"


def local_path(url: str) -> str:
    """The filesystem path of a local shard URL."""
    return url[len("file://"):] if url.lower().startswith("file://") else url


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures: ``attempts`` tries in all, waiting ``base_delay * 2**k`` (capped at
    ``max_delay``, with jitter) before try ``k + 1``. The environment can set them for a whole run:
    ``TORCHCLIP_SHARD_RETRIES`` and ``TORCHCLIP_SHARD_RETRY_DELAY``."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(attempts=max(1, int(os.environ.get("TORCHCLIP_SHARD_RETRIES", cls.attempts))),
                   base_delay=float(os.environ.get("TORCHCLIP_SHARD_RETRY_DELAY", cls.base_delay)))

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base_delay * (2 ** attempt))
        return d * (0.5 + random.random() / 2)


_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _status(exc: BaseException) -> int | None:
    for attr in ("status", "status_code", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    return None


def _is_transient(exc: BaseException) -> bool:
    """Worth another try: the network, a timeout, a server error; never a missing file or a denial."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ShardError)):
        return False
    status = _status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__module__ + "." + type(exc).__name__
    if name.startswith(("aiohttp.", "asyncio.")) or "Timeout" in name or "Connection" in name:
        return True
    return isinstance(exc, OSError) and not isinstance(exc, (tarfile.TarError, EOFError))


def _cause(exc: BaseException) -> str:
    """One line saying why a shard could not be read."""
    if isinstance(exc, ShardError):
        return exc.cause
    if isinstance(exc, FileNotFoundError):
        return "does not exist"
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc})" if str(exc) else "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a shard"
    status = _status(exc)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(getattr(exc, "message", None), str) and exc.message:  # type: ignore[attr-defined]
        msg = exc.message  # type: ignore[attr-defined]  # aiohttp: the reason phrase alone
    if status is not None:
        return f"HTTP {status}" + (f" ({msg})" if msg and str(status) not in msg else f": {msg}" if msg else "")
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


_HTTP_FS: dict[int, Any] = {}


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and path for a URL (imported only when a remote shard is opened)."""
    try:
        import fsspec
    except ImportError as e:
        raise ShardError(url, "reading remote shards needs fsspec: pip install 'torchclip[remote]'") from e
    scheme = _SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]
    if scheme in ("http", "https"):
        # one instance per process (fsspec's own cache is keyed on arguments; a forked worker needs its own loop)
        fs = _HTTP_FS.get(os.getpid())
        if fs is None:
            try:
                import aiohttp
            except ImportError as e:
                raise ShardError(url, "reading http(s) shards needs aiohttp: pip install 'torchclip[remote]'") from e
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
            fs = fsspec.filesystem("http", client_kwargs={"timeout": timeout}, skip_instance_cache=True)
            _HTTP_FS[os.getpid()] = fs
        return fs, url
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ShardError(url, f"cannot open {scheme}:// URLs: {e}") from e


class _PipeStream(io.RawIOBase):
    """Standard output of a shell command; a non-zero exit at the end is a :class:`ShardError`."""

    def __init__(self, url: str) -> None:
        self.url, self.cmd = url, url[len("pipe:"):]
        self.proc = subprocess.Popen(self.cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, bufsize=0)
        self._err: collections.deque[bytes] = collections.deque(maxlen=16)  # the last lines of stderr
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._done = False

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line[-500:])

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        assert self.proc.stdout is not None
        n = self.proc.stdout.readinto(b)
        if not n and not self._done:
            self._done = True
            rc = self.proc.wait()
            self._drain.join(timeout=5)
            if rc != 0:
                err = b"".join(self._err).decode("utf-8", "replace").strip().replace("\n", " | ")
                raise ShardError(self.url, f"command exited with status {rc}" + (f": {err}" if err else ""))
        return n or 0

    def close(self) -> None:
        if not self.closed:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
        super().close()


class _RetryingStream(io.RawIOBase):
    """A sequential stream over a remote object that reopens at the byte reached after a transient error."""

    def __init__(self, url: str, opener: Callable[[int], BinaryIO], policy: RetryPolicy) -> None:
        self.url, self._opener, self.policy = url, opener, policy
        self.pos = 0
        self._f: BinaryIO | None = None
        self._f = self._retry(lambda: opener(0))

    def _retry(self, fn: Callable[[], Any]) -> Any:
        for attempt in range(self.policy.attempts):
            try:
                return fn()
            except Exception as e:  # fsspec backends raise their own types (aiohttp, botocore, ...)
                if not _is_transient(e) or attempt == self.policy.attempts - 1:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise ShardError(self.url, _cause(e) + tries) from e
                if self._f is not None:
                    try:
                        self._f.close()
                    except Exception:  # the broken stream may fail to close; it is dropped anyway
                        pass
                    self._f = None
                time.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        def once() -> int:
            if self._f is None:
                self._f = self._opener(self.pos)
            data = self._f.read(len(b))
            b[: len(data)] = data
            return len(data)

        n = self._retry(once)
        self.pos += n
        return n

    def close(self) -> None:
        if self._f is not None and not self.closed:
            try:
                self._f.close()
            except Exception:  # closing a remote stream can fail after an error; nothing is lost
                pass
        super().close()


def _http_opener(fs: Any, url: str) -> Callable[[int], BinaryIO]:
    def open_at(pos: int) -> BinaryIO:
        headers = {"Range": f"bytes={pos}-"} if pos else {}
        f = fs.open(url, "rb", block_size=0, size=-1, headers=headers)  # size: skip the HEAD request
        status = getattr(getattr(f, "r", None), "status", 206)
        if pos and status == 200:  # the server ignored the range: skip what was read before
            skip = pos
            while skip:
                got = f.read(min(skip, _CHUNK))
                if not got:
                    raise EOFError(f"{url} is shorter than before ({pos - skip} of {pos} bytes)")
                skip -= len(got)
        return f

    return open_at


def _fsspec_opener(fs: Any, path: str) -> Callable[[int], BinaryIO]:
    def open_at(pos: int) -> BinaryIO:
        f = fs.open(path, "rb", block_size=8 << 20)
        if pos:
            f.seek(pos)
        return f

    return open_at


def open_shard(url: str, *, policy: RetryPolicy | None = None) -> BinaryIO:
    """A readable binary stream over one shard; errors are :class:`ShardError` (URL + cause)."""
    if url.startswith("pipe:"):
        try:
            return io.BufferedReader(_PipeStream(url), _CHUNK)
        except OSError as e:
            raise ShardError(url, f"cannot run the command: {e}") from e
    if is_local(url):
        path = local_path(url)
        try:
            f = open(path, "rb")  # noqa: SIM115 -- handed to the caller
        except OSError as e:
            raise ShardError(url, _cause(e)) from e
        if os.path.isdir(path):
            f.close()
            raise ShardError(url, "is a directory, not a shard")
        return f
    policy = policy or RetryPolicy.from_env()
    fs, path = _filesystem(url)
    scheme = _SCHEME.match(url).group(1).lower()  # type: ignore[union-attr]
    opener = _http_opener(fs, path) if scheme in ("http", "https") else _fsspec_opener(fs, path)
    return io.BufferedReader(_RetryingStream(url, opener, policy), _CHUNK)


def read_range(url: str, offset: int, size: int, *, policy: RetryPolicy | None = None) -> bytes:
    """``size`` bytes at ``offset`` of a shard (a recorded tar member), local or remote."""
    if is_local(url):
        with open(local_path(url), "rb") as f:
            f.seek(offset)
            data = f.read(size)
    else:
        policy = policy or RetryPolicy.from_env()
        fs, path = _filesystem(url)
        data = b""
        for attempt in range(policy.attempts):
            try:
                data = fs.cat_file(path, start=offset, end=offset + size)
                break
            except Exception as e:  # backends raise their own types
                if not _is_transient(e) or attempt == policy.attempts - 1:
                    raise ShardError(url, _cause(e)) from e
                time.sleep(policy.delay(attempt))
    if len(data) > size and len(data) >= offset + size:  # a server that ignores Range sent the whole object
        data = data[offset:offset + size]
    if len(data) != size:
        raise ShardError(url, f"shorter than the recorded member at {offset}+{size}")
    return data


# ---- tar samples -------------------------------------------------------------------------------------------------


class _Counting(io.RawIOBase):
    """Passes a stream through, counting the bytes read (the compressed side of a shard); subclasses also
    look at each chunk in ``_seen``."""

    chunk: int | None = None  # the most one read asks of ``f`` (None: what the caller asked)

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.count = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        data = self.f.read(len(b) if self.chunk is None else min(len(b), self.chunk))
        b[: len(data)] = data
        self.count += len(data)
        self._seen(data)
        return len(data)

    def _seen(self, data: bytes) -> None:
        pass


class _Inflation(_Counting):
    """The decompressed side of a compressed shard, refusing to grow past ``MAX_INFLATION`` x its input."""

    chunk = _CHUNK

    def __init__(self, url: str, f: BinaryIO, raw: _Counting, ratio: float, floor: int) -> None:
        super().__init__(f)
        self.url, self.raw, self.ratio, self.floor = url, raw, ratio, floor

    def _seen(self, data: bytes) -> None:
        if self.count > self.floor and self.count > self.ratio * max(self.raw.count, 1):
            raise ShardError(self.url, f"inflates to over {self.ratio:g}x its size ({self.count} bytes from "
                             f"{self.raw.count}): refused as a compression bomb")


class _Tail(_Counting):
    """Passes a stream through, keeping its last bytes so the block at the archive's end can be examined."""

    KEEP = 1 << 16

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self.buf = bytearray()

    def _seen(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 2 * self.KEEP:
            del self.buf[: len(self.buf) - self.KEEP]

    def get(self, offset: int, n: int) -> bytes:
        """Bytes ``[offset, offset + n)`` of the stream, reading on as needed (a short result at its end)."""
        while self.count < offset + n:
            if not self.read(max(n, tarfile.RECORDSIZE)):
                break
        start = self.count - len(self.buf)
        if offset < start:
            raise tarfile.ReadError(f"cannot re-read byte {offset}")
        return bytes(self.buf[offset - start : offset - start + n])


_MAGIC: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),  # type: ignore[arg-type,return-value]
    (b"BZh", lambda f: bz2.BZ2File(f, "rb")),  # type: ignore[arg-type,return-value]
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")),  # type: ignore[arg-type,return-value]
)


def _tar_stream(url: str, f: BinaryIO, *, ratio: float, floor: int) -> tuple[BinaryIO, bool]:
    """The uncompressed tar bytes of a shard stream and whether they had to be decompressed."""
    counting = _Counting(f)
    buffered = io.BufferedReader(counting, _CHUNK)
    head = buffered.peek(6)[:6]
    for magic, cls in _MAGIC:
        if head.startswith(magic):
            inflated = _Inflation(url, cls(buffered), counting, ratio, floor)  # type: ignore[arg-type]
            return io.BufferedReader(inflated, _CHUNK), True
    return buffered, False


def _split_key(name: str) -> tuple[str, str]:
    """``'dir/abc.01.jpg'`` -> (``'dir/abc'``, ``'01.jpg'``): WebDataset keys end at the basename's first dot."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:].lower()


@dataclass
class TarSample:
    """One WebDataset sample: its key, the members read (``data``: ``{ext: bytes}``), the name of every member
    (``names``, read or not), where each lies (``where``: ``{ext: (offset, size)}``, uncompressed shards only)
    and the wanted members too large to read (``oversize``)."""

    key: str
    url: str
    data: dict[str, bytes]
    where: dict[str, tuple[int, int]]
    names: dict[str, str]
    oversize: list[str]


def iter_tar(url: str, *, exts: Iterable[str] | None = None, max_member: int = MAX_MEMBER_BYTES,
             policy: RetryPolicy | None = None, ratio: float = MAX_INFLATION,
             floor: int = INFLATION_FLOOR) -> Iterator[TarSample]:
    """The samples of one tar shard, in file order: consecutive members sharing a key.

    Only members whose extension is in ``exts`` are read (all when None); the others are passed over (a seek
    for local uncompressed files). A member over ``max_member`` bytes is not read and is listed in the
    sample's ``oversize``. Any failure to open or read the shard -- including a truncated or non-tar file --
    is a :class:`ShardError` naming it; the samples before the failure have been yielded.
    """
    want = None if exts is None else {e.lower() for e in exts}
    f = open_shard(url, policy=policy)
    try:
        stream, compressed = _tar_stream(url, f, ratio=ratio, floor=floor)
        seekable = not compressed and is_local(url)
        tail: _Tail | None = None
        if seekable:
            stream = f  # random access: unread members are seeked over, never read
            f.seek(0)
        else:
            stream = tail = _Tail(stream)
        tar = tarfile.open(fileobj=stream, mode="r:" if seekable else "r|")
        current: TarSample | None = None
        while True:
            member = tar.next()
            tar.members.clear()  # tarfile keeps every header; a long shard must not grow memory
            if member is None:
                break
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            base = member.name.rsplit("/", 1)[-1]
            if not ext or base.startswith("."):
                continue
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = TarSample(key, url, {}, {}, {}, [])
            current.names[ext] = member.name
            if not compressed:
                current.where[ext] = (member.offset_data, member.size)
            if want is not None and ext not in want:
                continue
            if member.size > max_member:
                current.oversize.append(ext)
                continue
            fm = tar.extractfile(member)
            data = fm.read() if fm is not None else b""
            if len(data) != member.size:
                raise EOFError(f"member {member.name} is cut short")
            current.data[ext] = data
        # tarfile ends quietly at a cut or garbled header; only a zero block is a real end of archive
        if seekable:
            f.seek(tar.offset)
            end = f.read(tarfile.BLOCKSIZE)
        else:
            end = tail.get(tar.offset, tarfile.BLOCKSIZE)  # type: ignore[union-attr]
        if len(end) < tarfile.BLOCKSIZE:
            raise EOFError(f"the archive stops at byte {tar.offset} without its end marker")
        if end.count(0) != len(end):
            raise tarfile.ReadError(f"invalid header at byte {tar.offset}")
        if current is not None:
            yield current
    except ShardError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as e:
        msg = str(e).strip() or type(e).__name__
        if isinstance(e, EOFError) or "unexpected end" in msg:
            cause = f"truncated ({msg})"
        elif isinstance(e, (tarfile.TarError, zlib.error, lzma.LZMAError)) or "compressed" in msg.lower():
            cause = f"not a readable tar file ({msg})"
        else:
            cause = _cause(e)
        raise ShardError(url, cause) from e
    finally:
        f.close()

