"""The playground in headless Chromium: `streamlit run` against a real worker, driven by Playwright.

Waits for text use ``.first``: while Streamlit reruns a page it keeps the previous render's elements until the new
ones replace them, so a text can briefly be on the page twice (Playwright's strict mode would fail the wait).
"""

from __future__ import annotations

import contextlib
import hashlib
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

from diagrams import Kind
from playground.store import HistoryStore

from ..conftest import DIAGRAMS_DATA, OUTPUT_DIR, require
from ..helpers import Client
from .conftest import APP, ROOT, diagram_set, free_port, png_bytes

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


@contextlib.contextmanager
def streamlit_app(worker_url: str, history: Path, home: Path, name: str) -> Iterator[str]:
    """`streamlit run playground/app.py` as a subprocess, pointed at a worker and a history directory."""
    port = free_port()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    log_path = OUTPUT_DIR / f"playground-streamlit-{name}.log"
    env = {**os.environ, "INFERENCE_WS_URL": worker_url, "HOME": str(home), "PLAYGROUND_HISTORY_DIR": str(history)}
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
def history(tmp_path_factory) -> Path:
    """The module's history directory: the restart test opens a second playground on it."""
    return tmp_path_factory.mktemp("browser-history")


@pytest.fixture(scope="module")
def app_url(worker, history, tmp_path_factory) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    with streamlit_app(worker.url, history, tmp_path_factory.mktemp("home"), "first") as url:
        yield url


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
    page.locator("[data-testid='stSidebar']").get_by_text("Ready").first.wait_for()
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


def open_tab(page: Any, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def main_height(page: Any) -> int:
    return int(page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight"))


def test_upload_generate_and_compare_in_a_browser(browser, app_url, history, tmp_path, output_dir):
    """Upload a diagram, watch the answer stream beside the controls, run an A/B comparison, export it."""
    page = open_page(browser, app_url)
    page.set_viewport_size({"width": 1400, "height": 1000})
    uploader = page.locator(".st-key-upload-0")
    uploader.get_by_text(re.compile(r"^10MB per file")).first.wait_for()  # the worker's IMAGE_MAX_BYTES, not 200MB
    diagram = tmp_path / "diagram.png"
    diagram.write_bytes(png_bytes())
    uploader.locator("input[type=file]").set_input_files(str(diagram))
    page.get_by_text("diagram.png: PNG, 320×240 px").first.wait_for()
    set_max_tokens(page, 256)

    page.evaluate(RECORDER)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(re.compile(r"^done \((length|stop)\)$")).first.wait_for()
    seen = [s[0] for s in snapshots(page) if s[0]]
    streaming = [t for t in seen if t.endswith("▌")]
    assert len({len(t) for t in streaming}) >= 2, f"the text did not grow while streaming: {seen[:5]}"
    page.wait_for_function("() => !document.querySelector('.st-key-lane-0').innerText.endsWith('▌')")
    final = page.locator(".st-key-lane-0").inner_text()
    assert len(final) >= len(streaming[-1].removesuffix("▌").rstrip())  # all of it, without the cursor
    generate_box = page.get_by_role("button", name="Generate").bounding_box()
    lane_box = page.locator(".st-key-lane-0").bounding_box()
    assert lane_box["x"] > generate_box["x"] + generate_box["width"]  # the stream is beside the controls
    assert lane_box["y"] < 1000  # and visible without scrolling

    page.get_by_text("A/B", exact=True).click()
    page.get_by_role("button", name="Compare A/B").wait_for()
    page.evaluate(RECORDER)
    page.get_by_role("button", name="Compare A/B").click()
    page.get_by_text(re.compile(r"^Comparison\. A \(demo-a\) and B \(demo-b\) ")).first.wait_for()
    both_streaming = [s for s in snapshots(page) if s[0] and s[1] and s[0].endswith("▌") and s[1].endswith("▌")]
    assert both_streaming, "A and B never streamed at the same time"
    page.locator(".ab-diff").first.wait_for()
    assert main_height(page) < 2400, "the Run tab is one long scroll"
    screenshot(page, output_dir / "playground-ab.png")

    open_tab(page, "History")
    single, ab = HistoryStore(history).runs()[-2:]
    page.get_by_text(f"Run {ab.id} · A/B · demo-a vs demo-b · diagram.png · done").first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export runs as JSON").click()
    document = json.loads(Path(download.value.path()).read_text())
    assert [(r["id"], r["mode"], r["status"]) for r in document["runs"][-2:]] == [(single.id, "single", "done"),
                                                                                  (ab.id, "ab", "done")]
    assert document["runs"][-1]["comparison"]["words"]["a"] > 0
    assert document["runs"][-2]["image"]["name"] == "diagram.png"
    page.close()


def test_a_bpmn_file_is_drawn_and_answered_in_a_browser(browser, app_url, renderer, history, tmp_path, output_dir):
    """Upload a .bpmn file: its drawing is shown with the source's name, the answer streams, and the history keeps
    the source's digest beside the picture's."""
    require(renderer, Kind.BPMN)
    page = open_page(browser, app_url)
    page.set_viewport_size({"width": 1400, "height": 1000})
    source = tmp_path / "order-process.bpmn"
    source.write_bytes((DIAGRAMS_DATA / "order-process.bpmn").read_bytes())
    page.locator(".st-key-upload-0 input[type=file]").set_input_files(str(source))
    page.get_by_text(re.compile(r"^order-process\.bpmn: BPMN source drawn by bpmn-js 18\.31\.1 as a PNG, "
                                r"1540×740 px")).first.wait_for()
    page.wait_for_function("() => Array.from(document.images).some(i => i.naturalWidth > 0"  # the drawing (resized)
                           " && Math.abs(i.naturalWidth / i.naturalHeight - 1540 / 740) < 0.02)")
    set_max_tokens(page, 64)
    page.evaluate(RECORDER)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(re.compile(r"^done \((length|stop)\)$")).first.wait_for()
    streaming = [s[0] for s in snapshots(page) if s[0] and s[0].endswith("▌")]
    assert len({len(t) for t in streaming}) >= 2, "the answer did not stream"
    record = HistoryStore(history).runs()[-1]
    assert record.status == "done" and record.image is not None
    assert record.image["name"] == "order-process.bpmn" and record.image["mime"] == "image/png"
    assert record.image["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (record.image["source"]["kind"], record.image["source"]["renderer"]) == ("bpmn", "bpmn-js 18.31.1")
    screenshot(page, output_dir / "playground-bpmn.png")
    page.close()


def test_stop_cancels_and_keeps_the_partial_output(browser, app_url, worker, history, output_dir):
    """While streaming: one Stop button, no Deploy, a live status; Stop keeps the partial text in the history."""
    page = open_page(browser, app_url)
    page.get_by_role("button", name="Use a sample diagram").click()
    page.get_by_text("sample-order-process.png: PNG").first.wait_for()
    set_max_tokens(page, 2048)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("streaming…").first.wait_for()
    page.wait_for_function("() => (document.querySelector('.st-key-lane-0') || {innerText: ''}).innerText.length > 20")
    page.locator("[data-testid='stSidebar']").get_by_text(re.compile(r"Running [1-9]\d* of \d+")).first.wait_for()
    assert page.get_by_role("button", name="Stop", exact=True).count() == 1  # Streamlit's own Stop is hidden
    assert page.get_by_role("button", name="Deploy").count() == 0
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("Stopped. The text produced until then is kept in the history.").first.wait_for()
    assert page.locator(".st-key-lane-0").inner_text().strip()
    page.get_by_role("cell", name="cancelled").first.wait_for()
    with Client(worker.url) as client:
        assert client.request({"type": "status"}, "status")["running"] == 0
    open_tab(page, "History")
    stopped = HistoryStore(history).runs()[-1]
    assert (stopped.status, stopped.outputs[0].finish_reason) == ("stopped", "cancelled")
    page.get_by_text(f"Run {stopped.id} · single · base model · sample-order-process.png · stopped · ").first.wait_for()
    screenshot(page, output_dir / "playground-stopped.png")
    page.close()


def test_set_evaluation_with_stop_resume_verdicts_and_export(browser, app_url, tmp_path, output_dir):
    """A zip of 5 diagrams with references: progress, Stop in the middle, Resume, a verdict by keyboard, exports."""
    page = open_page(browser, app_url)
    set_max_tokens(page, 384)
    open_tab(page, "Evaluate a set")
    archive = tmp_path / "set.zip"
    archive.write_bytes(diagram_set(5))
    page.locator(".st-key-eval_upload-0 input[type=file]").set_input_files(str(archive))
    page.get_by_text("5 diagrams, 5 with a reference").first.wait_for()
    page.get_by_role("button", name="Run the evaluation").click()
    page.get_by_text(re.compile(r"^Item 2 of 5")).first.wait_for()
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text(re.compile(r"^[1-4] of 5 items done · interrupted$")).first.wait_for()  # where Stop landed
    page.get_by_role("button", name=re.compile(r"^Resume \([1-4] items to run\)")).click()
    page.get_by_text("5 of 5 items done · done").first.wait_for(timeout=180_000)
    page.get_by_text("Item 1 of 5").first.wait_for()
    page.locator("body").press("a")  # the "A better" button's shortcut
    page.get_by_text(re.compile(r"^Item 2 of 5")).first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export JSON Lines").click()
    lines = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [line["type"] for line in lines] == ["evaluation"] + ["item"] * 5
    assert lines[0]["status"] == "done" and lines[0]["summary"]["verdicts"]["a"] == 1
    assert all(line["scores"]["A"]["chrf"] is not None for line in lines[1:])
    screenshot(page, output_dir / "playground-evaluation.png")
    page.get_by_role("tab", name="Scores").click()
    page.get_by_text("chrF A − B per item").first.wait_for()
    screenshot(page, output_dir / "playground-evaluation-scores.png")
    page.close()


def test_history_survives_a_restart_of_the_playground(browser, app_url, worker, history, tmp_path, output_dir):
    """A second playground on the same history directory lists what the first recorded and repeats a run."""
    page = open_page(browser, app_url)
    page.get_by_role("button", name="Use a sample diagram").click()
    page.get_by_text("sample-order-process.png: PNG").first.wait_for()
    set_max_tokens(page, 12)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(re.compile(r"^done \((length|stop)\)$")).first.wait_for()
    page.close()
    entries = HistoryStore(history).list_entries()
    latest = entries[0]
    with streamlit_app(worker.url, history, tmp_path, "restarted") as restarted:
        page = open_page(browser, restarted)
        open_tab(page, "History")
        for entry in entries[:8]:
            kind = "Run" if entry.kind == "run" else "Evaluation"
            label = f"{kind} {entry.id} · {entry.title} · {entry.status} · {entry.created_at}"
            page.get_by_text(label).first.wait_for()
        page.get_by_text(f"Run {latest.id} · {latest.title}").click()
        page.get_by_role("button", name="Repeat (same seed)").first.wait_for()
        screenshot(page, output_dir / "playground-history.png")
        page.get_by_role("button", name="Repeat (same seed)").first.click()
        open_tab(page, "Run")
        page.get_by_text(re.compile(rf"^Run {latest.id + 1} · single · \d{{4}}-")).first.wait_for()
        page.get_by_text(re.compile(r"^done \((length|stop)\)$")).first.wait_for()
        page.close()
    original, repeated = HistoryStore(history).runs([latest.id, latest.id + 1])
    assert repeated.settings == original.settings and repeated.outputs[0].text == original.outputs[0].text
