"""Hostile and broken checkpoint files: each ends quickly in one ``CheckpointError`` naming the file.

Every file is generated here in a few lines. Where the failure mode is a blow-up (memory or time), the load
runs in a child process under a memory cap (RLIMIT_AS) and a time limit; the negative control removes the
check that stops it and shows the same file then breaks the cap.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchclip
from torchclip.config import get_preset
from torchclip.formats import CheckpointError

MEM_CAP = 2 << 30  # importing torch and torchclip takes ~0.7 GB of address space


def run_capped(path: Path, patch: str = "", timeout: float = 30.0) -> tuple[str, float]:
    """Load ``path`` in a child under the memory cap; ``patch`` is code run first (a negative control).

    Returns (outcome, seconds): the exception's class name and message, "ok", "killed" or "timeout".
    """
    code = textwrap.dedent(f"""
        import resource, sys, time, warnings
        resource.setrlimit(resource.RLIMIT_AS, ({MEM_CAP}, {MEM_CAP}))
        warnings.simplefilter("ignore")
        import torch, torchclip, torchclip.readers, torchclip.torchscript, torchclip.formats
        {patch}
        t = time.perf_counter()
        try:
            torchclip.load_model({str(path)!r})
            out = "ok"
        except BaseException as e:
            out = type(e).__name__ + ": " + str(e)
        print(out.replace(chr(10), " ")[:2000])
        print(time.perf_counter() - t)
    """)
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return "timeout", timeout
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or len(lines) < 2:
        return f"killed (rc {r.returncode}): {r.stderr[-300:]}", 0.0
    return lines[0], float(lines[1])


def assert_refused(path: Path, reason: str) -> None:
    outcome, seconds = run_capped(path)
    assert outcome.startswith("CheckpointError") and str(path) in outcome and reason in outcome, outcome
    assert seconds < 5, f"took {seconds:.1f}s"


def assert_blows_up(path: Path, patch: str, timeout: float = 30.0) -> None:
    outcome, _ = run_capped(path, patch, timeout)
    blown = ("MemoryError", "can't allocate memory", "SystemError", "timeout", "killed", "RecursionError")
    assert any(b in outcome for b in blown), f"without the check the file should break the cap: {outcome}"


def tiny_config() -> dict:
    return get_preset("cpu-vit-32").to_dict()


# ---------------------------------------------------------------- configs that claim absurd sizes

def test_torchclip_metadata_claiming_1e9_layers(tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg["vision"]["layers"] = 10**9
    path = tmp_path / "huge.safetensors"
    save_file({"logit_scale": torch.zeros(())}, path, metadata={"torchclip_config": json.dumps(cfg)})
    assert path.stat().st_size < 2000
    assert_refused(path, "vision layers=1000000000")
    assert_blows_up(path, "torchclip.readers.check_config_bounds = lambda c, w: None", timeout=20)


def test_hf_config_claiming_1e9_layers(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "clip", "projection_dim": 8,
        "text_config": {"hidden_size": 64, "num_attention_heads": 1, "num_hidden_layers": 10**9},
        "vision_config": {"hidden_size": 64, "num_attention_heads": 1, "num_hidden_layers": 1,
                          "image_size": 32, "patch_size": 8}}))
    save_file({"logit_scale": torch.zeros(())}, folder / "model.safetensors")
    outcome, seconds = run_capped(folder)
    assert outcome.startswith("CheckpointError") and "config.json" in outcome and "1000000000" in outcome, outcome
    assert seconds < 5


def test_open_clip_config_claiming_1e9_layers(tmp_path: Path) -> None:
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 10**9, "width": 64, "patch_size": 8},
        "text_cfg": {"width": 64, "heads": 1, "layers": 1}}}))
    save_file({"logit_scale": torch.zeros(())}, folder / "open_clip_model.safetensors")
    outcome, seconds = run_capped(folder)
    assert outcome.startswith("CheckpointError") and "open_clip_config.json" in outcome, outcome
    assert seconds < 5


# ---------------------------------------------------------------- tensors that view more than their storage

def test_expanded_fp16_embedding_is_refused_before_upcast(tmp_path: Path) -> None:
    path = tmp_path / "expanded.pt"
    emb = torch.zeros(1, 512, dtype=torch.float16).expand(1 << 24, 512)  # 16 GiB as fp16, 32 GiB upcast
    torch.save({"token_embedding.weight": emb, "text_projection": torch.zeros(512, 8)}, path)
    assert path.stat().st_size < 100_000
    assert_refused(path, "expanded or overlapping view")
    assert_blows_up(path, "torchclip.readers._check_tensors = lambda sd, where: "
                          "{k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}")


class _Storage:
    """Stands for a storage in a hand-written pickle (see ``_TSPickler``)."""


class _Tensor:
    def __init__(self, size: tuple, stride: tuple) -> None:
        self.size, self.stride = size, stride

    def __reduce__(self) -> tuple:
        return torch._utils._rebuild_tensor_v2, (_Storage(), 0, self.size, self.stride, False, OrderedDict())


class _TSPickler(pickle.Pickler):
    numel = 1

    def persistent_id(self, obj: object) -> object:
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if isinstance(obj, _Storage) else None


def torchscript_archive(path: Path, root: object, storage: bytes = b"\0" * 4) -> Path:
    buf = io.BytesIO()
    pickler = _TSPickler(buf, protocol=2)
    pickler.numel = len(storage) // 4
    pickler.dump(root)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", buf.getvalue())
        zf.writestr("m/data/0", storage)
        zf.writestr("m/code/__torch__/m.py", "")
    return path


def test_zero_stride_view_in_a_torchscript_archive(tmp_path: Path) -> None:
    path = torchscript_archive(tmp_path / "stride0.pt", {"visual.proj": _Tensor((1 << 17, 1 << 17), (0, 0))})
    assert path.stat().st_size < 1000  # a 64 GiB tensor in well under a kilobyte
    assert_refused(path, "claims more elements than its storage holds")
    assert_blows_up(path, "torchclip.torchscript._checked_view = lambda s, o, size, stride, w: "
                          "torch.as_strided(s, size, stride, o).clone()")


def test_overlapping_view_in_a_torchscript_archive(tmp_path: Path) -> None:
    path = torchscript_archive(tmp_path / "overlap.pt", {"visual.proj": _Tensor((2, 2), (1, 1))},
                               storage=b"\0" * 16)
    assert_refused(path, "overlaps itself")


# ---------------------------------------------------------------- pickles that are deep, shared or cyclic

def test_shared_dicts_sixty_levels_deep(tmp_path: Path) -> None:
    d: dict = {"w": _Tensor((1,), (1,))}
    for _ in range(60):
        d = {"a": d, "b": d}  # 2^60 paths through 121 objects
    path = torchscript_archive(tmp_path / "shared.pt", d)
    assert path.stat().st_size < 2000
    assert_refused(path, "missing")  # walked once per object, then found to hold no CLIP weights
    # Control: a walk that follows every path instead of every object never ends.
    naive = textwrap.dedent("""
        def naive(root, where):
            out = {}
            def walk(o, p):
                if isinstance(o, torch.Tensor):
                    out[p] = o
                elif isinstance(o, dict):
                    for k, v in o.items():
                        walk(v, p + k + ".")
            walk(root, "")
            return out
        torchclip.torchscript._collect = naive
    """).replace("\n", "\n        ")
    assert_blows_up(path, naive, timeout=15)


def test_self_containing_dict(tmp_path: Path) -> None:
    d: dict = {}
    d["self"] = d
    path = torchscript_archive(tmp_path / "cycle.pt", d)
    outcome, seconds = run_capped(path)
    assert outcome.startswith("CheckpointError") and "RecursionError" not in outcome, outcome


# ---------------------------------------------------------------- archives that inflate or sprawl

def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    torch.save({"text_projection": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as zin:
        members = [(i.filename, zin.read(i.filename)) for i in zin.infolist()]
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w") as zout:  # the storage member: 1.5 GiB of zeros, deflated to ~1.5 MB
        for name, data in members:
            if "/data/" in name:
                with zout.open(zipfile.ZipInfo(name), "w", force_zip64=True) as f:
                    f._compressor = zlib.compressobj(1, zlib.DEFLATED, -15)  # noqa: SLF001
                    f._zinfo.compress_type = zipfile.ZIP_DEFLATED  # noqa: SLF001
                    for _ in range(1536):
                        f.write(zeros)
            else:
                zout.writestr(name, data)
    assert path.stat().st_size < 20 << 20
    assert_refused(path, "compression bomb")
    assert_blows_up(path, "torchclip.readers.MAX_COMPRESSION_RATIO = 10**9", timeout=60)


@pytest.mark.parametrize("members", [10_000, 30_000])
def test_many_members_are_recognised_in_linear_time(tmp_path: Path, members: int) -> None:
    path = tmp_path / "sprawl.pt"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            zf.writestr(f"p{i}/data.pkl", b"")
    outcome, seconds = run_capped(path, timeout=30)
    assert outcome.startswith("CheckpointError") and str(path) in outcome, outcome
    assert seconds < 5, f"took {seconds:.1f}s"


def test_too_many_members_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.pt"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(101):
            zf.writestr(f"a/data/{i}", b"")
    monkeypatch.setattr(torchclip.readers, "MAX_ZIP_MEMBERS", 100)
    with pytest.raises(CheckpointError, match="101 archive members"):
        torchclip.load_model(path)


# ---------------------------------------------------------------- files that are not files, or not safe

def test_device_files_are_never_read() -> None:
    outcome, seconds = run_capped(Path("/dev/zero"))
    assert outcome.startswith("CheckpointError") and "not a regular file" in outcome, outcome
    assert seconds < 5


def test_fifo_is_never_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        torchclip.load_model(fifo)


def test_legacy_torch_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"text_projection": torch.zeros(2, 2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        torchclip.load_model(path)


def test_refused_pickles_are_checkpoint_errors(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("m/code/__torch__/m.py", "")
    with pytest.raises(CheckpointError, match="system"):
        torchclip.load_model(path)


# ---------------------------------------------------------------- malformed configs name the file

def _hf_folder(tmp_path: Path, config: object) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    save_file({"logit_scale": torch.zeros(())}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("config", [
    '{"model_type": "clip", ',  # not JSON
    {"model_type": "clip"},  # no towers
    {"model_type": "clip", "text_config": {"hidden_size": 64, "num_attention_heads": 0, "num_hidden_layers": 1},
     "vision_config": {"hidden_size": 64, "num_attention_heads": 0, "num_hidden_layers": 1, "image_size": 32,
                       "patch_size": 8}},  # a division by zero
    {"model_type": "clip", "text_config": "nope", "vision_config": []},
])
def test_malformed_hf_configs_name_the_file(tmp_path: Path, config: object) -> None:
    folder = _hf_folder(tmp_path, config)
    with pytest.raises(CheckpointError, match=str(folder / "config.json")):
        torchclip.load_model(folder)


@pytest.mark.parametrize("meta", ["{broken", json.dumps({"vision": {}}), json.dumps([1, 2])])
def test_malformed_torchclip_metadata_names_the_file(tmp_path: Path, meta: str) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"logit_scale": torch.zeros(())}, path, metadata={"torchclip_config": meta})
    with pytest.raises(CheckpointError, match=str(path)):
        torchclip.load_model(path)
