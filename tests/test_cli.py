"""The command line speaks one way: one-line errors and an exit status, --debug for the traceback, the same
flag for the same idea in every command, --version, and --help without importing torch."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchclip.cli import COMMANDS, UsageError, describe, main

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"torchclip {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _subprocess(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "torchclip.cli", *argv], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=300)


# ---- help, version, unknown commands --------------------------------------------------------------------------

HELP_PROBE = """
import contextlib, io, sys
from torchclip.cli import main
calls = [["--help"], ["--version"]] + [[c, "--help"] for c in {commands}]
calls += [["eval", s, "--help"] for s in ("zeroshot", "probe", "fewshot", "retrieval")]
for argv in calls:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(argv)
    assert code == 0 and out.getvalue().strip(), (argv, code)
before = "torch" in sys.modules
{control}
print(before, "torch" in sys.modules)
"""


@pytest.mark.parametrize("control", [False, True])
def test_help_and_version_do_not_import_torch(control: bool) -> None:
    """Help answers at once because no command's parser imports torch (4-10 s before). The control shows
    the probe does see torch when something imports it."""
    code = HELP_PROBE.format(commands=list(COMMANDS), control="import torchclip.model" if control else "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True" if control else "False"]


def test_python_dash_m_torchclip_is_the_command() -> None:
    """``python -m torchclip`` (what scripts without the console script use) runs the same CLI."""
    full = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "torchclip", "--version"], capture_output=True, text=True,
                       env=full, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("torchclip "), r.stderr
    bad = subprocess.run([sys.executable, "-m", "torchclip", "nope"], capture_output=True, text=True, env=full,
                         timeout=300)
    assert bad.returncode == 2 and "nope" in bad.stderr  # the exit status comes through


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import torchclip

    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"torchclip {torchclip.__version__}"


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["trian"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("torchclip: error: unknown command 'trian'; did you mean 'train'?")
    code, _, err = _run([], capsys)
    assert code == 2 and "usage: torchclip" in err


def test_lazy_package_names_still_resolve() -> None:
    """``import torchclip`` is lazy, but every public name and submodule resolves as it did."""
    import torchclip

    for name in torchclip.__all__:
        assert getattr(torchclip, name) is not None, name
    assert torchclip.reference.__name__ == "torchclip.reference"  # a submodule nobody imported explicitly
    with pytest.raises(AttributeError):
        torchclip.no_such_name  # noqa: B018
    ns: dict = {}
    exec("from torchclip import *", ns)
    assert set(torchclip.__all__) <= set(ns)


# ---- one spelling per idea --------------------------------------------------------------------------------------


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for name, (module, _) in COMMANDS.items():
        if name == "models":
            continue
        parser = importlib.import_module(module).build_parser()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            out.update({f"{name} {k}": p for k, p in subs[0].choices.items()})
        else:
            out[name] = parser
    return out


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {s: a.help or "" for a in parser._actions for s in a.option_strings}


def test_one_flag_per_idea() -> None:
    parsers = _parsers()
    progress = {"train", "embed", "eval zeroshot", "eval probe", "eval fewshot", "eval retrieval"}
    writers = {"train", "embed", "index", "export"}
    helps: dict[str, set[str]] = {"--quiet": set(), "--debug": set()}
    for name, parser in parsers.items():
        opts = _options(parser)
        assert "--debug" in opts, name
        assert not {"--no-progress", "--progress", "--force", "--no-overwrite"} & set(opts), name
        assert ("--quiet" in opts) == (name in progress), name
        assert ("--overwrite" in opts) == (name in writers), name
        for flag in helps:
            if flag in opts:
                helps[flag].add(opts[flag])
    assert all(len(h) == 1 for h in helps.values()), helps  # the same words everywhere


@pytest.mark.parametrize("command", [c for c in COMMANDS])
def test_every_command_takes_debug(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--debug", "--help"]) == 0
    assert main(["--debug", command, "--help"]) == 0
    assert "--debug" in capsys.readouterr().out


# ---- one-line errors ------------------------------------------------------------------------------------------


def test_missing_config_file_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = _subprocess("train", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    line = _one_line_error(r.stderr, "train")
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in line
    r = _subprocess("train", "--config", str(tmp_path / "nope.yaml"), "--debug")
    assert r.returncode != 0 and "Traceback (most recent call last)" in r.stderr and "UsageError" in r.stderr
    with pytest.raises(UsageError, match="does not exist"):  # in-process too: --debug lets it through
        main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")])


def test_unknown_preset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["train", "--model.preset=ViT-Q/99", "--data.train=x.tar"], capsys)
    line = _one_line_error(err, "train")
    assert code == 2 and "model.preset='ViT-Q/99'" in line and "cpu-vit-32" in line


@pytest.mark.parametrize("override, words", [("--optim.lr=nan", "optim.lr=nan: must be a finite number"),
                                              ("--optim.lr=-1e-3", "optim.lr=-0.001: must be > 0"),
                                              ("--optim.beta1=1", "must be >= 0 and < 1"),
                                              ("--data.vocab=bpe:lots", "'bpe:N' needs a vocabulary size")])
def test_values_a_run_cannot_use_are_refused(override: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["train", override, "--data.train=x.tar"], capsys)
    assert code == 2 and words in _one_line_error(err, "train")


def test_pretrained_openai_offline_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHCLIP_OFFLINE", "1")
    monkeypatch.setenv("TORCHCLIP_CACHE", str(tmp_path / "cache"))
    code, _, err = _run(["eval", "zeroshot", "--model", "ViT-B/32", "--pretrained", "openai", "--dataset",
                         str(tmp_path / "val.tar"), "--quiet"], capsys)
    line = _one_line_error(err, "eval")
    assert code == 1 and "is not cached and TORCHCLIP_OFFLINE is set" in line and "download" in line


def test_missing_shard_is_one_line(tmp_path: Path) -> None:
    """A missing shard used to end a 30-line DataLoader worker traceback; with workers the error travels as
    text from the worker process, which the CLI unwraps."""
    from trainkit import tiny_overrides

    cfg = tiny_overrides(str(tmp_path / "does-not-exist.tar"), tmp_path / "run", data={"num_workers": 1})
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    r = _subprocess("train", "--config", str(tmp_path / "c.json"))
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert len(errors) == 1 and errors[0].startswith("torchclip train: error: "), r.stderr
    assert "does-not-exist.tar" in errors[0]


def test_describe_unwraps_worker_errors_and_names_files() -> None:
    import torchclip

    data_py = Path(torchclip.__file__).parent / "data.py"
    worker = RuntimeError(f'Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback (most '
                          f'recent call last):\n  File "{data_py}", line 3, in f\n    raise\n'
                          'FileNotFoundError: shard /data/a.tar not found\n')
    assert describe(worker) == "shard /data/a.tar not found"
    assert describe(PermissionError(13, "Permission denied", "/runs/x/config.json")) == \
        "/runs/x/config.json: Permission denied"
    assert describe(KeyError("unknown model 'x'")) == "unknown model 'x'"
    assert describe(ValueError("two\nlines")) == "two lines"
    try:
        [].pop()
    except IndexError as e:  # raised outside torchclip, but an input error type: message only
        assert describe(e) == "pop from empty list"
    try:
        raise AssertionError("internal")
    except AssertionError as e:
        assert describe(e) == "AssertionError: internal (--debug shows the traceback)"


# ---- index / search / embed options ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--kind", "hnsw", "--hnsw-m", "0"], "HNSW M (neighbours per node) must be in [2, 512], got 0"),
    (["--kind", "hnsw", "--hnsw-m", "1"], "must be in [2, 512], got 1"),
    (["--labels", "/nope.txt"], "labels file /nope.txt does not exist"),
    (["--labels", "classes.json"], "labels file classes.json does not exist"),
    (["--templates", "a photo of a dog"], "a template with '{}'"),
    (["--target-recall", "nan"], "target recall must be in (0, 1]"),
    (["--nlist", "0"], "expected an integer >= 1, got 0"),
])
def test_index_refuses_options_that_cannot_work_up_front(argv: list[str], words: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss", reason="torchclip index needs faiss-cpu")
    # the embeddings do not exist: the option is refused before they are looked for
    code, _, err = _run(["index", str(tmp_path / "no-embeddings"), "--out", str(tmp_path / "idx"), *argv], capsys)
    assert code == 2 and words in _one_line_error(err, "index")
    assert not (tmp_path / "idx").exists()


def test_hnsw_m_zero_is_a_value_error_not_an_abort(tmp_path: Path) -> None:
    """In the library too: FAISS aborts the whole process (exit 134) on M=0, so the check runs first. In a
    child process, so that a regression fails this test instead of killing the test worker."""
    pytest.importorskip("faiss", reason="torchclip index needs faiss-cpu")
    code = ("import numpy as np\nfrom torchclip.search import ClipIndex\nx = np.eye(8, dtype=np.float32)\n"
            "try:\n    ClipIndex.build(x, [{'id': i} for i in range(8)], kind='hnsw', hnsw_m=0)\n"
            "except ValueError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0 and r.stdout.startswith("refused: HNSW M"), (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("argv, words", [(["--labels", "/nope.txt"], "labels file /nope.txt does not exist"),
                                         (["--templates", "a photo"], "a template with '{}'")])
def test_search_refuses_labels_and_templates_up_front(argv: list[str], words: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["search", str(tmp_path / "no-index"), "--text", "a dog", *argv], capsys)
    assert code == 2 and words in _one_line_error(err, "search")


@pytest.mark.parametrize("k", ["0", "-5", "two"])
def test_search_k_must_be_positive(k: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["search", str(tmp_path / "idx"), "--text", "a dog", "-k", k], capsys)
    line = _one_line_error(err, "search")
    assert code == 2 and f"argument -k: expected an integer >= 1, got {k if k != 'two' else repr(k)}" in line


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny embedded image folder (random-init model: no download, no ../shared)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli-embed")
    (root / "imgs").mkdir()
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20)]):
        Image.new("RGB", (24, 24), colour).save(root / "imgs" / f"{i}.png")
    assert main(["embed", str(root / "imgs"), "--model", "cpu-vit-32", "--random-init", "--workers", "0",
                 "--quiet", "--out", str(root / "emb")]) == 0
    return root


def test_embed_and_index_refuse_to_overwrite_alike(embeddings: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss", reason="torchclip index needs faiss-cpu")
    capsys.readouterr()
    embed = ["embed", str(embeddings / "imgs"), "--model", "cpu-vit-32", "--random-init", "--workers", "0",
             "--quiet", "--out", str(embeddings / "emb")]
    index = ["index", str(embeddings / "emb"), "--out", str(tmp_path / "idx")]
    code, out, _ = _run(index, capsys)
    assert code == 0 and out.strip() == f"wrote flat index of 4 x 128 to {tmp_path / 'idx'}"
    before = (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns
    for argv, command in ((index, "index"), (embed, "embed")):
        code, _, err = _run(argv, capsys)
        line = _one_line_error(err, command)
        assert code == 2 and "already holds" in line and "pass --overwrite to replace" in line
    assert (tmp_path / "idx" / "index.faiss").stat().st_mtime_ns == before
    code, out, _ = _run([*index, "--overwrite", "--kind", "hnsw"], capsys)
    assert code == 0 and out.startswith(f"wrote hnsw index of 4 x 128 to {tmp_path / 'idx'}")
    code, out, _ = _run([*embed, "--overwrite"], capsys)
    assert code == 0 and out.startswith(f"wrote 4 embeddings to {embeddings / 'emb'}")
