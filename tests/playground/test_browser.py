"""The playground in headless Chromium: `streamlit run` against a real worker, driven by Playwright."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import OUTPUT_DIR
from ..helpers import Client
from .conftest import APP, ROOT, free_port, png_bytes

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000

# Records every distinct text of the output boxes (and whether they show the streaming cursor) every 20 ms.
RECORDER = """() => {
  window.__snaps = [];
  window.__recorder = setInterval(() => {
    const texts = [0, 1].map(i => {
      const el = document.querySelector('.st-key-lane-' + i);
      return el ? el.innerText : null;
    });
    const last = window.__snaps[window.__snaps.length - 1];
    if (!last || last[0] !== texts[0] || last[1] !== texts[1]) window.__snaps.push(texts);
  }, 20);
}"""


@pytest.fixture(scope="module")
def app_url(worker, tmp_path_factory) -> Iterator[str]:
    """`streamlit run playground/app.py` as a subprocess, pointed at the module's worker."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    port = free_port()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = OUTPUT_DIR / "playground-streamlit.log"
    env = {**os.environ, "INFERENCE_WS_URL": worker.url, "HOME": str(tmp_path_factory.mktemp("home"))}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
             "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"streamlit exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "streamlit did not become healthy within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(app_url, tmp_path_factory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 2600}, accept_downloads=True,
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def open_page(browser: Any, app_url: str) -> Any:
    page = browser.new_page()
    page.goto(app_url)
    page.get_by_text("Diagram playground").first.wait_for()
    page.locator("[data-testid='stSidebar']").get_by_text("Ready").wait_for()
    return page


def set_max_tokens(page: Any, value: int) -> None:
    field = page.get_by_role("spinbutton", name="Max tokens")
    field.fill(str(value))
    field.press("Enter")
    page.wait_for_function(f"() => document.querySelector('input[aria-label=\"Max tokens\"]').value === '{value}'")


def snapshots(page: Any) -> list[list[str | None]]:
    return page.evaluate("() => { clearInterval(window.__recorder); return window.__snaps; }")  # type: ignore[no-any-return]


def screenshot(page: Any, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main section, so make the window as tall as the content."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height) + 100, 8000))})
    page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)


def test_upload_generate_and_compare_in_a_browser(browser, app_url, tmp_path, output_dir):
    """Upload a diagram, watch the answer stream in, run an A/B comparison, export it; screenshot the result."""
    page = open_page(browser, app_url)
    diagram = tmp_path / "diagram.png"
    diagram.write_bytes(png_bytes())
    page.locator("input[type=file]").set_input_files(str(diagram))
    page.get_by_text("diagram.png: PNG, 320×240 px").wait_for()
    set_max_tokens(page, 256)

    page.evaluate(RECORDER)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(re.compile(r"^done \((length|stop)\)$")).wait_for()
    seen = [s[0] for s in snapshots(page) if s[0]]
    streaming = [t for t in seen if t.endswith("▌")]
    assert len({len(t) for t in streaming}) >= 2, f"the text did not grow while streaming: {seen[:5]}"
    page.wait_for_function("() => !document.querySelector('.st-key-lane-0').innerText.endsWith('▌')")
    assert len(page.locator(".st-key-lane-0").inner_text()) >= len(streaming[-1]) - 1  # all of it, no cursor

    page.get_by_text("A/B", exact=True).click()
    page.get_by_role("button", name="Compare A/B").wait_for()
    page.evaluate(RECORDER)
    page.get_by_role("button", name="Compare A/B").click()
    page.get_by_role("heading", name="Comparison").wait_for()
    both_streaming = [s for s in snapshots(page) if s[0] and s[1] and s[0].endswith("▌") and s[1].endswith("▌")]
    assert both_streaming, "A and B never streamed at the same time"
    page.get_by_text(re.compile(r"^A \(demo-a\) and B \(demo-b\) ")).wait_for()
    page.locator(".ab-diff").wait_for()

    with page.expect_download() as download:
        page.get_by_role("button", name="Export JSON").click()
    document = json.loads(Path(download.value.path()).read_text())
    assert [(r["id"], r["mode"], r["status"]) for r in document["runs"]] == [(1, "single", "done"), (2, "ab", "done")]
    assert document["runs"][1]["comparison"]["words"]["a"] > 0
    assert document["runs"][0]["image"]["name"] == "diagram.png"
    screenshot(page, output_dir / "playground-ab.png")
    page.close()


def test_stop_cancels_and_keeps_the_partial_output(browser, app_url, worker, output_dir):
    """Stop during a long generation: the worker stops, the partial text stays on the page and in the history."""
    page = open_page(browser, app_url)
    page.get_by_role("button", name="Use a sample diagram").click()
    page.get_by_text("sample-order-process.png: PNG").wait_for()
    set_max_tokens(page, 2048)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("streaming…").wait_for()
    page.wait_for_function("() => (document.querySelector('.st-key-lane-0') || {innerText: ''}).innerText.length > 20")
    page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("Stopped. The text produced until then is kept in the history.").wait_for()
    page.get_by_text(re.compile(r"Run 1 · single · base model · stopped · ")).wait_for()  # the history, below
    assert page.locator(".st-key-lane-0").inner_text().strip()
    page.get_by_role("cell", name="cancelled").first.wait_for()
    with Client(worker.url) as client:
        assert client.request({"type": "status"}, "status")["running"] == 0
    screenshot(page, output_dir / "playground-stopped.png")
    page.close()
