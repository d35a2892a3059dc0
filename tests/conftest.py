"""Shared test plumbing: locating ../shared without copying it into the project.

A user's clone has no ../shared: tests that need it skip with a reason. CI sets
TORCHCLIP_REQUIRE_SHARED=1, and then a missing fixture is a failure, not a skip.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHCLIP_SHARED", REPO.parent / "shared"))


def _require(rel: str) -> Path:
    path = SHARED / rel
    if path.exists():
        return path
    msg = f"shared fixture {path} is missing (clone without ../shared)"
    if os.environ.get("TORCHCLIP_REQUIRE_SHARED") == "1":
        pytest.fail(msg + "; TORCHCLIP_REQUIRE_SHARED=1 makes this a failure")
    pytest.skip(msg)


@pytest.fixture
def shared() -> Callable[[str], Path]:
    """``shared("fixtures/tokenizer/cases.jsonl")`` -> Path, or skip/fail when ../shared is absent."""
    return _require


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private $TORCHCLIP_CACHE for one test."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("TORCHCLIP_CACHE", str(d))
    return d


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on 127.0.0.1 over a fresh folder: ``(folder, base_url)``."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
