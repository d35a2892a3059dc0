"""torchclip embed over remote shards and across processes: http/s3 sources equal local ones, resume skips
finished shards, ranks merge into the single-process result (in-process ranks and real torchrun)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shardkit import http_server, s3_server, upload

from torchclip.embed import ModelSpec, embed_source, load_embeddings, open_source
from torchclip.embed.cli import main as embed_main
from torchclip.embed.sources import read_tar_member
from torchclip.embed.store import EmbeddingWriter

SPEC = ModelSpec("cpu-vit-32", random_init=True, seed=0)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(1)
    return SPEC.load_model()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    yield from s3_server()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_SHARD_RETRIES", "3")
    monkeypatch.setenv("TORCHCLIP_SHARD_RETRY_DELAY", "0.01")


def _image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((30 + seed % 7, 40, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shards(folder: Path, sizes: list[int], *, broken: int | None = None) -> str:
    """Shards ``s-000.tar``... with ``sizes[i]`` samples each (keys k<n>); sample ``broken`` is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s, size in enumerate(sizes):
        with tarfile.open(folder / f"s-{s:03d}.tar", "w") as tar:
            for _ in range(size):
                data = b"not an image" if n == broken else _image(n)
                for name, blob in ((f"k{n:03d}.png", data), (f"k{n:03d}.txt", f"caption {n}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
                n += 1
    return str(folder / f"s-{{000..{len(sizes) - 1:03d}}}.tar")


def _same(a_path: Path, b_path: Path, *, exact: bool = True) -> None:
    a, b = load_embeddings(a_path), load_embeddings(b_path)
    assert a.ids == b.ids and len(a.ids) > 0
    if exact:
        assert np.array_equal(a.vectors, b.vectors)
    else:
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


def test_embed_of_a_missing_input_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "cpu-vit-32", "--random-init", "--quiet", "--out", str(tmp_path / "o")]
    assert embed_main(["/nope", *args]) == 1
    assert "input /nope does not exist" in capsys.readouterr().err
    assert embed_main([str(tmp_path / "x-{000..999999999}.tar"), *args]) == 1  # lazy: no list of a billion
    assert "x-000.tar does not exist (the first shard of" in capsys.readouterr().err
    _shards(tmp_path / "d", [2, 2])
    (tmp_path / "d" / "s-001.tar").unlink()
    assert embed_main([str(tmp_path / "d" / "s-{000..001}.tar"), *args]) == 1
    assert "s-001.tar: does not exist" in capsys.readouterr().err


def test_embed_over_http_equals_local_and_resumes_past_finished_shards(tmp_path: Path, model: torch.nn.Module) -> None:
    pytest.importorskip("aiohttp", reason="http(s) shards need aiohttp (pip install 'torchclip[remote]')")
    local = _shards(tmp_path / "d", [3, 3, 2], broken=4)
    embed_source(open_source([local]), model, tmp_path / "local", workers=0, batch_size=1, progress=False)
    with http_server(tmp_path / "d") as (base, faults):
        remote = f"{base}/s-{{000..002}}.tar"
        source = open_source([remote])
        assert source.kind == "tar" and source.count() is None  # counting would mean downloading

        class Stop(Exception):
            pass

        def stop(writer: EmbeddingWriter) -> None:
            if writer.consumed >= 4:
                raise Stop

        with pytest.raises(Stop):
            embed_source(source, model, tmp_path / "http", workers=0, batch_size=1, part_size=2, progress=False,
                         on_commit=stop)
        faults.log.clear()
        res = embed_source(source, model, tmp_path / "http", workers=0, batch_size=1, part_size=2, progress=False)
        assert res.resumed_from == 4 and res.errors == 1
        assert {name for name, _ in faults.log} == {"s-001.tar", "s-002.tar"}  # shard 0 was not read again
        _same(tmp_path / "local", tmp_path / "http")
        emb = load_embeddings(tmp_path / "http")
        rec = emb.records[-1]
        assert rec["source"] == f"{base}/s-002.tar"
        assert read_tar_member(rec["source"], rec["offset"], rec["size"]) == _image(7)
        errors = (tmp_path / "http" / "errors.jsonl").read_text()
        assert '"id": "k004"' in errors


def test_embed_over_s3_equals_local(tmp_path: Path, model: torch.nn.Module, s3_endpoint: str) -> None:
    local = _shards(tmp_path / "d", [2, 3])
    upload(tmp_path / "d", "emb-bucket", "x/")
    embed_source(open_source([local]), model, tmp_path / "local", workers=0, batch_size=1, progress=False)
    embed_source(open_source(["s3://emb-bucket/x/s-{000..001}.tar"]), model, tmp_path / "s3", workers=1,
                 batch_size=1, progress=False)
    _same(tmp_path / "local", tmp_path / "s3")


@pytest.mark.parametrize("layout", ["by-shard", "by-item", "folder"])
def test_ranks_merge_into_the_single_process_result(tmp_path: Path, model: torch.nn.Module, layout: str) -> None:
    """Two ranks (one interrupted and resumed) give exactly the single-process store: ids, order, vectors,
    errors; the first rank to finish leaves the merge to the last."""
    if layout == "folder":
        (tmp_path / "imgs" / "sub").mkdir(parents=True)
        for i in range(7):
            (tmp_path / "imgs" / ("sub" if i % 3 == 0 else "") / f"i{i}.png").write_bytes(_image(i))
        (tmp_path / "imgs" / "zz-broken.png").write_bytes(b"nope")
        spec = str(tmp_path / "imgs")
    else:
        spec = _shards(tmp_path / "d", [3, 4, 2] if layout == "by-shard" else [9], broken=2)
    source = open_source([spec])
    kw = dict(workers=0, batch_size=1, progress=False)
    embed_source(source, model, tmp_path / "single", **kw)

    class Stop(Exception):
        pass

    def stop(writer: EmbeddingWriter) -> None:
        raise Stop

    with pytest.raises(Stop):  # rank 1 dies after its first part
        embed_source(source, model, tmp_path / "dist", rank=1, world_size=2, part_size=1, on_commit=stop, **kw)
    r0 = embed_source(source, model, tmp_path / "dist", rank=0, world_size=2, **kw)
    assert not r0.merged and r0.pending == "1 of 2 ranks finished"
    with pytest.raises(FileNotFoundError, match="unfinished distributed run: 1 of 2 ranks finished"):
        load_embeddings(tmp_path / "dist")
    r1 = embed_source(source, model, tmp_path / "dist", rank=1, world_size=2, part_size=1, **kw)
    assert r1.merged and r1.resumed_from == 1 and r1.out == tmp_path / "dist"
    assert r0.rows + r1.rows == len(load_embeddings(tmp_path / "single").ids)
    _same(tmp_path / "single", tmp_path / "dist")
    single_err = (tmp_path / "single" / "errors.jsonl").read_text()
    assert single_err and (tmp_path / "dist" / "errors.jsonl").read_text() == single_err
    meta = json.loads((tmp_path / "dist" / "meta.json").read_text())
    assert meta["ranks"] == 2 and "rank" not in meta["source"]
    assert not (tmp_path / "dist" / ".ranks").exists()


def test_ranks_merge_into_safetensors(tmp_path: Path, model: torch.nn.Module) -> None:
    source = open_source([_shards(tmp_path / "d", [2, 2, 1])])
    kw = dict(workers=0, batch_size=1, progress=False, fmt="safetensors")
    embed_source(source, model, tmp_path / "single.safetensors", **kw)
    for r in (2, 0, 1):
        res = embed_source(source, model, tmp_path / "dist.safetensors", rank=r, world_size=3, **kw)
    assert res.merged
    _same(tmp_path / "single.safetensors", tmp_path / "dist.safetensors")


def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    """The README's command shape: torchrun, two CPU processes, one store that index/search read as one."""
    spec = _shards(tmp_path / "d", [3, 2, 3, 1], broken=5)
    common = [spec, "--model", "cpu-vit-32", "--random-init", "--workers", "0", "--batch-size", "1",
              "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "torchclip.cli", "embed", *common, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "torchclip.cli", "embed", *common, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert "merged all ranks into" in dist.stdout
    _same(tmp_path / "one", tmp_path / "two")
    pytest.importorskip("faiss", reason="the index check needs faiss (torchclip[search])")
    from torchclip.search.cli_index import main as index_main

    assert index_main([str(tmp_path / "two"), "--out", str(tmp_path / "idx")]) == 0
