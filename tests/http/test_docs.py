"""The HTTP API's docs (``/docs``, Swagger UI) in headless Chromium with the network cut off but for the worker: every
asset comes from the worker itself, none from a CDN, and the page lists the operations."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000


def test_docs_show_the_operations_offline(worker, output_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    base = worker.api
    served: list[str] = []
    aborted: list[str] = []

    def only_the_worker(route, request) -> None:
        if request.url == base or request.url.startswith(base + "/"):
            served.append(request.url)
            route.continue_()
        else:
            aborted.append(request.url)
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 2000},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            page.route("**/*", only_the_worker)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = page.goto(base + "/docs")
            assert response is not None and response.status == 200
            page.locator(".opblock").first.wait_for(state="visible")
            page.wait_for_load_state("networkidle")
            paths = page.locator(".opblock .opblock-summary-path").all_inner_texts()
            page.screenshot(path=str(output_dir / "http-docs.png"), full_page=True)
        finally:
            context.close()

    paths = [p.replace("\u200b", "").strip() for p in paths]  # Swagger UI breaks long paths with zero-width spaces
    assert "/infer" in paths and "/inference" in paths, paths
    assert "/v1/chat/completions" in paths and "/v1/models" in paths, paths
    assert not aborted, f"the docs asked for something besides the worker: {aborted}"
    assert any(url.endswith("/openapi.json") for url in served), served
    assert any("/docs/assets/" in url for url in served), served
    assert not errors, errors
