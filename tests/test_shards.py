"""The shard opener: lazy brace patterns, local/pipe/http/s3 shards, retries, bounded tar reading, and the
training stream over all of them (errors naming the shard, counted skips, exact mid-epoch resume)."""

from __future__ import annotations

import gzip
import io
import json
import re
import sys
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shardkit import Faults, http_server, s3_server, upload
from trainkit import add, make_shards

from torchclip import shards as S
from torchclip.data import ContrastiveStream, _LazyPermutation, get_caption, iter_tar, load_eval_samples
from torchclip.tokenizer import Tokenizer

TOK = Tokenizer([], context_length=32)
FAST = S.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    yield from s3_server()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_SHARD_RETRIES", "3")
    monkeypatch.setenv("TORCHCLIP_SHARD_RETRY_DELAY", "0.01")
    torch.set_num_threads(1)


def _stream(source: str, **kw) -> ContrastiveStream:
    args = dict(image_size=16, tokenizer=TOK, batch_size=4, shuffle_buffer=8, seed=3)
    args.update(kw)
    return ContrastiveStream(source, **args)


def _keys(url: str, **kw) -> list[str]:
    return [s.key for s in S.iter_tar(url, **kw)]


def _samples(url: str) -> list[tuple[str, dict[str, bytes]]]:
    return [(s.key, s.data) for s in S.iter_tar(url)]


# ---- brace patterns ----------------------------------------------------------------------------------------------


def _eager(pattern: str) -> list[str]:
    """The obvious eager expansion (innermost-first), for patterns without nesting."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.groups()
        width = len(lo) if lo.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        opts = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        opts = body.split(",")
    return [x for o in opts for x in _eager(head + o + tail)]


_part = st.one_of(
    st.text("abc-_./", min_size=1, max_size=4),
    st.builds(lambda lo, n, w: f"{{{str(lo).zfill(w)}..{lo + n}}}", st.integers(0, 30), st.integers(-5, 12),
              st.integers(1, 3)).filter(lambda s: "..-" not in s),
    st.lists(st.text("xyz0", min_size=1, max_size=3), min_size=2, max_size=3).map(lambda o: "{" + ",".join(o) + "}"),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_part, min_size=1, max_size=4))
def test_expand_equals_the_eager_expansion(parts: list[str]) -> None:
    pattern = "".join(parts)
    lazy, eager = S.expand(pattern), _eager(pattern)
    assert len(lazy) == len(eager) and list(lazy) == eager
    assert [lazy[i] for i in range(-len(eager), 0)] == eager


def test_expand_forms() -> None:
    assert S.expand("d/s-{000..002}.tar::x.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar", "x.tar"]
    assert S.expand("{a,b{1..2}}.tar") == ["a.tar", "b1.tar", "b2.tar"]  # nesting, in order
    assert S.expand("s-{0..10..5}") == ["s-0", "s-5", "s-10"] and S.expand("s-{3..1}") == ["s-3", "s-2", "s-1"]
    assert S.expand("lit{x}eral{}") == ["lit{x}eral{}"]  # as in bash, not a pattern
    assert S.expand("s3://b/k-{0..1}.tar::pipe:cat x") == ["s3://b/k-0.tar", "s3://b/k-1.tar", "pipe:cat x"]
    assert S.expand(["p.tar", "q-{0..1}.tar"]) == ["p.tar", "q-0.tar", "q-1.tar"]
    assert S.expand("/a/x.tar::/b/y.tar::s3://c/z.tar") == ["/a/x.tar", "/b/y.tar", "s3://c/z.tar"]
    assert S.expand("http://[::1]:80/a.tar::b.tar") == ["http://[::1]:80/a.tar", "b.tar"]
    with pytest.raises(IndexError):
        S.expand("a{0..2}")[3]


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_expand_is_lazy() -> None:
    """A billion names cost nothing until asked for; the probe does see an eager list (negative control)."""
    def probe() -> None:
        big = S.expand("x-{0..999999999}.tar")
        assert len(big) == 10**9 and big[-1] == "x-999999999.tar" and big[123456789] == "x-123456789.tar"
        assert [n for _, n in zip(range(3), big)] == ["x-0.tar", "x-1.tar", "x-2.tar"]

    assert _peak(probe) < 64 << 10
    assert _peak(lambda: list(S.expand("x-{0..99999}.tar"))) > 1 << 20


def test_lazy_permutation_is_a_bijection() -> None:
    for n in (1, 2, 3, 17, 1000, 4097):
        p = _LazyPermutation(n, "seed")
        assert sorted(p(i) for i in range(n)) == list(range(n))
    assert [_LazyPermutation(1000, "a")(i) for i in range(5)] != [_LazyPermutation(1000, "b")(i) for i in range(5)]


# ---- local, pipe, compressed ---------------------------------------------------------------------------------


def test_local_errors_name_the_shard(tmp_path: Path) -> None:
    with pytest.raises(S.ShardError, match=r"nope\.tar: does not exist") as e:
        S.open_shard(str(tmp_path / "nope.tar"))
    assert e.value.url == str(tmp_path / "nope.tar") and e.value.cause == "does not exist"
    with pytest.raises(S.ShardError, match="is a directory"):
        S.open_shard(str(tmp_path))
    spec = make_shards(tmp_path / "d", n_shards=1, per_shard=3)
    first = S.expand(spec)[0]
    assert _keys("file://" + first) == _keys(first) == ["s00000", "s00001", "s00002"]


def test_pipe_shards(tmp_path: Path) -> None:
    first = S.expand(make_shards(tmp_path, n_shards=1, per_shard=4))[0]
    assert _samples(f"pipe:cat '{first}'") == _samples(first)
    with pytest.raises(S.ShardError, match=r"pipe:cat '/nope/x.tar': command exited with status 1: .*No such file"):
        list(S.iter_tar("pipe:cat '/nope/x.tar'"))
    # a command that fails after a good start: the samples before, then the error
    got = []
    with pytest.raises(S.ShardError, match="status 3"):
        for s in S.iter_tar(f"pipe:cat '{first}'; exit 3"):
            got.append(s.key)
    assert got == ["s00000", "s00001", "s00002", "s00003"][: len(got)]


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz"])
def test_compressed_shards_read_the_same(tmp_path: Path, codec: str) -> None:
    first = S.expand(make_shards(tmp_path, n_shards=1, per_shard=4))[0]
    import bz2
    import lzma

    comp = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec]
    packed = tmp_path / f"c.tar.{codec}"
    packed.write_bytes(comp(Path(first).read_bytes()))
    assert _samples(str(packed)) == _samples(first)
    assert all(not s.where for s in S.iter_tar(str(packed)))  # no offsets into a compressed stream


def _gzip_bomb(path: Path, member_sizes: list[int]) -> None:
    """A gzip'd tar of zero-filled members, built from repeated gzip members so it costs no real compression."""
    zeros = gzip.compress(b"\0" * (1 << 24), 9)  # 16 MiB of zeros in ~16 KB
    with open(path, "wb") as f:
        for i, size in enumerate(member_sizes):
            info = tarfile.TarInfo(f"k{i}.bin")
            info.size = size
            f.write(gzip.compress(info.tobuf()))
            assert size % (1 << 24) == 0
            for _ in range(size >> 24):
                f.write(zeros)
        f.write(gzip.compress(b"\0" * tarfile.RECORDSIZE))


def test_gzip_bomb_is_refused_early(tmp_path: Path) -> None:
    """A 2 MB file inflating to 2 GiB: refused after a bounded amount of decompression, either as one huge
    member (never read into memory) or as many members under the member limit (the inflation ratio)."""
    one = tmp_path / "one.tar"
    _gzip_bomb(one, [2 << 30])
    assert one.stat().st_size < 3 << 20
    many = tmp_path / "many.tar"
    _gzip_bomb(many, [32 << 20] * 64)
    for bomb in (one, many):
        with pytest.raises(S.ShardError, match="compression bomb") as e:
            list(S.iter_tar(str(bomb)))
        inflated = int(re.search(r"\((\d+) bytes from", str(e.value)).group(1))
        assert inflated < S.INFLATION_FLOOR + (64 << 20)
    # negative control: without the ratio bound the same kind of file is read through
    small = tmp_path / "small.tar"
    _gzip_bomb(small, [16 << 20] * 6)
    assert len(list(S.iter_tar(str(small), ratio=float("inf")))) == 6
    with pytest.raises(S.ShardError, match="compression bomb"):
        list(S.iter_tar(str(small), floor=32 << 20))


def test_oversize_member_is_not_read(tmp_path: Path) -> None:
    from torchclip.data import SkipSample, _image_bytes

    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "a.png", b"x" * 5000)
        add(tar, "a.txt", b"caption")
        add(tar, "b.txt", b"second")
    (s1, s2) = S.iter_tar(str(path), max_member=4096)
    assert s1.oversize == ["png"] and "png" not in s1.data and s1.data["txt"] == b"caption" and s2.key == "b"
    assert s1.names["png"] == "a.png" and s1.where["png"][1] == 5000  # known, just not read
    raw = next(iter(iter_tar(str(path), max_member=4096)))
    assert raw["__oversize__"] == ["png"]
    with pytest.raises(SkipSample) as e:
        _image_bytes(raw)
    assert e.value.reason == "oversize_member"


def test_truncated_and_garbled_ends_are_errors(tmp_path: Path) -> None:
    """tarfile itself ends quietly at a cut header; the reader insists on a real end-of-archive block."""
    first = S.expand(make_shards(tmp_path, n_shards=1, per_shard=4))[0]
    data = Path(first).read_bytes()
    with tarfile.open(first) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # where the end-of-archive block starts
    cases = {"nomarker.tar": data[:end], "header.tar": data[: end + 100], "junk.tar": data[:end] + b"\x01" * 1024,
             "member.tar": data[: last.offset_data + 10]}
    for name, body in cases.items():
        p = tmp_path / name
        p.write_bytes(body)
        with pytest.raises(S.ShardError, match=re.escape(name) + ": (truncated|not a readable tar file)"):
            list(S.iter_tar(str(p)))
        with pytest.raises(S.ShardError):  # the streaming path (no seeks) finds the same
            list(S.iter_tar(f"pipe:cat '{p}'"))
    assert len(list(S.iter_tar(first))) == 4  # the intact file (control)


# ---- http ---------------------------------------------------------------------------------------------------------


def test_http_shards_and_errors(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="http(s) shards need aiohttp (pip install 'torchclip[remote]')")
    spec = make_shards(tmp_path, n_shards=2, per_shard=5)
    local = S.expand(spec)
    with http_server(tmp_path) as (base, faults):
        urls = S.expand(f"{base}/shard-{{000..001}}.tar")
        assert [_samples(u) for u in urls] == [_samples(u) for u in local]
        with pytest.raises(S.ShardError, match=r"/nope\.tar: does not exist"):
            list(S.iter_tar(f"{base}/nope.tar"))
        faults.status["shard-000.tar"] = [403]
        with pytest.raises(S.ShardError, match=r"shard-000\.tar: HTTP 403"):
            list(S.iter_tar(urls[0]))
        # transient: two 503s, then fine
        faults.status["shard-000.tar"] = [503, 503]
        assert _samples(urls[0]) == _samples(local[0])
        # persistent: gives up after the policy's attempts, naming the status
        faults.status["shard-000.tar"] = [503] * 5
        with pytest.raises(S.ShardError, match=r"shard-000\.tar: HTTP 503.*after 3 tries"):
            list(S.iter_tar(urls[0], policy=FAST))
        faults.status.clear()
        # the connection drops mid-body: the stream reopens at the byte it reached (a Range request)
        size = Path(local[1]).stat().st_size
        faults.drop_after["shard-001.tar"] = [size // 3, 1000]
        faults.log.clear()
        assert _samples(urls[1]) == _samples(local[1])
        ranges = [r for n, r in faults.log if n == "shard-001.tar"]
        # "bytes=N-" from the bytes delivered before each cut (none: aiohttp may drop what it buffered)
        starts = [int(r[6:-1]) if r else 0 for r in ranges]
        assert len(ranges) == 3 and ranges[0] is None
        assert starts[1] <= size // 3 and starts[1] <= starts[2] <= starts[1] + 1000


def test_a_broken_stream_reopens_at_the_byte_it_reached() -> None:
    """Deterministic version of the dropped connection: the opener sees the exact offsets, and a permanent
    error is not retried."""
    data = bytes(range(256)) * 40
    opened: list[int] = []

    def opener(pos: int):
        opened.append(pos)

        class Cut(io.RawIOBase):
            def __init__(self) -> None:
                self.pos, self.limit = pos, pos + 3000

            def readable(self) -> bool:
                return True

            def readinto(self, b) -> int:
                if self.pos >= self.limit and self.pos < len(data):
                    raise ConnectionResetError("peer went away")
                chunk = data[self.pos : min(self.pos + len(b), self.limit, len(data))]
                b[: len(chunk)] = chunk
                self.pos += len(chunk)
                return len(chunk)

        return io.BufferedReader(Cut(), 1000)

    stream = S._RetryingStream("http://x/y.tar", opener, FAST)
    reader, got = io.BufferedReader(stream, 1000), b""
    while chunk := reader.read(1000):
        got += chunk
    assert got == data and opened == [0, 3000, 6000, 9000]

    def missing(pos: int):
        raise FileNotFoundError("gone")

    calls = []
    with pytest.raises(S.ShardError, match="y.tar: does not exist"):
        S._RetryingStream("http://x/y.tar", lambda pos: calls.append(pos) or missing(pos), FAST)
    assert calls == [0]


def test_http_resume_without_range_support(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="http(s) shards need aiohttp")
    local = S.expand(make_shards(tmp_path, n_shards=1, per_shard=6))[0]
    with http_server(tmp_path, Faults(ranges=False)) as (base, faults):
        faults.drop_after["shard-000.tar"] = [4000]
        assert _samples(f"{base}/shard-000.tar") == _samples(local)


def test_training_stream_over_http_resumes_exactly(tmp_path: Path) -> None:
    """The same batches as from local files, and a mid-epoch resume continues exactly (augmentations too)."""
    pytest.importorskip("aiohttp", reason="http(s) shards need aiohttp")
    from torchclip.data import CaptionAugment

    spec = make_shards(tmp_path, n_shards=3, per_shard=5)
    kw = dict(batch_size=3, shuffle_buffer=7, caption_augment=CaptionAugment(tag_dropout=0.5, shuffle_tags=True))
    with http_server(tmp_path) as (base, _):
        remote = f"{base}/shard-{{000..002}}.tar"
        full = [b for _, b in zip(range(9), _stream(remote, **kw).iter_stream(0))]
        local = [b for _, b in zip(range(9), _stream(spec, **kw).iter_stream(0))]
        for a, b in zip(full, local):
            assert torch.equal(a.pixels, b.pixels) and torch.equal(a.ids, b.ids)
        for cut in (2, 5):  # 15 samples per epoch: the second cut resumes in epoch 2
            resumed = [b for _, b in zip(range(3), _stream(remote, start={0: full[cut - 1].cursor}, **kw).iter_stream(0))]
            for a, b in zip(full[cut:], resumed):
                assert a.cursor == b.cursor and torch.equal(a.pixels, b.pixels) and torch.equal(a.ids, b.ids)
        # two DataLoader workers over http, as training runs them
        s = _stream(remote, num_workers=2, **kw)
        got = [b for _, b in zip(range(4), torch.utils.data.DataLoader(s, batch_size=None, num_workers=2))]
        assert sorted({b.stream for b in got}) == [0, 1]


# ---- s3 -------------------------------------------------------------------------------------------------------------


def test_s3_shards(tmp_path: Path, s3_endpoint: str) -> None:
    spec = make_shards(tmp_path / "d", n_shards=2, per_shard=4)
    upload(tmp_path / "d", "bucket", "train/")
    remote = "s3://bucket/train/shard-{000..001}.tar"
    assert [_samples(u) for u in S.expand(remote)] == [_samples(u) for u in S.expand(spec)]
    with pytest.raises(S.ShardError, match=r"s3://bucket/train/nope\.tar: does not exist"):
        list(S.iter_tar("s3://bucket/train/nope.tar"))
    with pytest.raises(S.ShardError, match=r"s3://no-such-bucket/x\.tar"):
        list(S.iter_tar("s3://no-such-bucket/x.tar"))
    a = next(_stream(remote).iter_stream(0))
    b = next(_stream(spec).iter_stream(0))
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.ids, b.ids)
    offset, size = next(S.iter_tar(S.expand(remote)[1])).where["png"]
    assert S.read_range(S.expand(remote)[1], offset, size) == next(S.iter_tar(S.expand(spec)[1])).data["png"]


# ---- the training stream's errors ---------------------------------------------------------------------------------


def test_missing_shard_stops_training_naming_it_or_is_a_counted_skip(tmp_path: Path) -> None:
    spec = make_shards(tmp_path, n_shards=2, per_shard=4)
    (tmp_path / "shard-001.tar").unlink()
    with pytest.raises(S.ShardError, match=r"shard-001\.tar: does not exist"):
        for _ in zip(range(10), _stream(spec, batch_size=2, shuffle_buffer=1).iter_stream(0)):
            pass
    batches = [b for _, b in zip(range(6), _stream(spec, batch_size=2, shuffle_buffer=1, skip_bad_shards=True).iter_stream(0))]
    assert sum(b.skips.get("bad_shard", 0) for b in batches) >= 1 and all(b.pixels.shape[0] == 2 for b in batches)
    # every shard gone: the skip-mode stream says so with the counts instead of spinning
    (tmp_path / "shard-000.tar").unlink()
    with pytest.raises(RuntimeError, match=r"got no samples.*bad_shard.: 2"):
        next(_stream(spec, skip_bad_shards=True).iter_stream(0))


def test_no_usable_sample_fails_with_the_counts(tmp_path: Path) -> None:
    """Shards whose every sample is broken end the stream with the skip counts (not an endless silent loop);
    one good sample among them is enough to keep going (the control)."""
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(5):
            add(tar, f"k{i}.png", b"\x89PNG broken")
            add(tar, f"k{i}.txt", b"caption")
        add(tar, "n.txt", b"no image")
    with pytest.raises(RuntimeError, match=r"no usable sample in a whole epoch") as e:
        next(_stream(str(path), shuffle_buffer=3).iter_stream(0))
    assert re.search(r"'corrupt_image': \d+", str(e.value)) and re.search(r"'missing_image': \d+", str(e.value))
    from trainkit import sample_members

    with tarfile.open(tmp_path / "one-good.tar", "w") as tar:
        for i in range(5):
            add(tar, f"k{i}.png", b"\x89PNG broken")
            add(tar, f"k{i}.txt", b"caption")
        for ext, data in sample_members(0).items():
            add(tar, f"good.{ext}", data)
    b = next(_stream(str(tmp_path / "one-good.tar"), shuffle_buffer=3).iter_stream(0))
    assert b.pixels.shape[0] == 4


def test_a_billion_shard_pattern_fails_fast_naming_a_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _stream(str(tmp_path / "x-{0..999999999}.tar"))
    assert len(s.urls) == 10**9
    with pytest.raises(S.ShardError, match=r"x-\d+\.tar: does not exist"):
        next(s.iter_stream(0))


def test_lazy_shard_order_covers_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchclip.data as data

    monkeypatch.setattr(data, "_SHUFFLE_LIST_MAX", 0)  # force the lazy permutation on a small list
    spec = make_shards(tmp_path, n_shards=5, per_shard=2)
    seen = []
    for rank in range(2):
        s = _stream(spec, rank=rank, world_size=2, batch_size=1, shuffle_buffer=1)
        gen = s._epoch_items(s.stream_id(0), 0, {})
        seen += [x["__key__"] for x in gen]
    assert sorted(seen) == [f"s{i:05d}" for i in range(10)]


# ---- bad .json names the shard and the sample -------------------------------------------------------------------


def test_bad_json_names_the_shard_and_the_sample(tmp_path: Path) -> None:
    from trainkit import png_bytes

    path = tmp_path / "j.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "good.png", png_bytes((1, 2, 3), "square"))
        add(tar, "good.json", json.dumps({"caption": "fine", "label": "a"}).encode())
        add(tar, "bad.png", png_bytes((1, 2, 3), "circle"))
        add(tar, "bad.json", b"{not json")
    raw = list(iter_tar(str(path)))[1]
    with pytest.raises(Exception, match=re.escape(f"{path}: sample bad: bad .json")):
        get_caption(raw, "caption")
    assert len(load_eval_samples(str(path), 16, caption_key="caption")[1]) == 1  # skipped there, not fatal
    from torchclip.evaluation.datasets import load_webdataset

    with pytest.raises(ValueError, match=re.escape(f"{path}: sample bad: bad .json")):
        load_webdataset(str(path), label_key="json:label")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
