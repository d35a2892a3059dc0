"""torchclip serve end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

Types a query and checks the result thumbnails really load, uploads a picture and checks its neighbours
and zero-shot labels appear, uploads a broken file and checks the error is shown, and keeps a screenshot at
``test-artifacts/serve.png``. Without Chromium or Playwright the test skips, unless
``TORCHCLIP_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("faiss", reason="torchclip serve needs faiss-cpu")

from clip_index_fixture import COLOURS, TOKENIZER, build_colour_index, colour_image  # noqa: E402

from torchclip.search import Searcher  # noqa: E402
from torchclip.serve import serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("TORCHCLIP_CHROMIUM", "/usr/bin/chromium")
# The flags CI runs Chromium with: no sandbox (containers), no GPU, and nothing that phones home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser() -> None:
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright is not installed (pip install playwright; never `playwright install`)")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("TORCHCLIP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; TORCHCLIP_REQUIRE_BROWSER=1 makes this a failure")
    pytest.skip(reason)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from conftest import _require

    _require_browser()
    index_dir, _ = build_colour_index(tmp_path, _require(TOKENIZER))
    server, url = serve_in_thread(Searcher.open(index_dir))
    yield url, tmp_path
    server.shutdown()
    server.server_close()


def _artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test outputs (screenshots); never committed\n*\n")
    return ARTIFACTS


def test_search_and_upload_in_chromium(served: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, tmp = served
    upload = tmp / "query.png"
    colour_image(COLOURS["green"], 1).save(upload)
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a PNG")
    profile = tmp / "chromium-profile"
    problems: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.goto(url + "/")
            expect(page.locator("#info")).to_contain_text("12 items")
            expect(page.locator("#query-panel")).to_be_hidden()

            # Text query -> a grid of result thumbnails that actually loaded.
            page.fill("#query", "a red picture")
            page.click("#search-button")
            expect(page.locator("#results li.result")).to_have_count(12)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            expect(page.locator("#results-title")).to_contain_text("a red picture")
            expect(page.locator("#results li.result").first.locator(".score")).to_contain_text("score")

            # Upload -> neighbours (the same picture first) and zero-shot labels.
            page.set_input_files("#upload", str(upload))
            expect(page.locator("#labels li.label")).to_have_count(len(COLOURS))
            expect(page.locator("#results li.result").first.locator(".id")).to_have_text("green1.png")
            expect(page.locator("#status")).to_contain_text("neighbours of query.png")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img, #query-preview')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(_artifacts() / "serve.png"), full_page=True)

            # A click on a result asks for its neighbours.
            page.locator("#results li.result img").nth(1).click()
            expect(page.locator("#results-title")).to_contain_text("Items similar to")

            # A broken upload is rejected with a message, and the page keeps working.
            page.set_input_files("#upload", str(broken))
            expect(page.locator("#status")).to_have_class("error")
            expect(page.locator("#status")).to_contain_text("could not use the upload")
            expect(page.locator("#query-panel")).to_be_hidden()
            page.screenshot(path=str(_artifacts() / "serve-error.png"))
        finally:
            context.close()
    # A failed upload is answered 400, which Chromium logs as a console error; anything else is a bug.
    unexpected = [m for m in problems if "400 (Bad Request)" not in m]
    assert not unexpected, unexpected
    shutil.rmtree(profile, ignore_errors=True)
