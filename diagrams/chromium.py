"""One headless Chromium per process, driven by Playwright on a thread of its own.

Chromium is started on first use and reused; every job gets a fresh browser context and page, offline, with every
request the page makes refused (the scripts it needs are put into the page as text, never fetched). A job that runs
past its time limit has its context closed, which ends its renderer process even when its script never returns; a
browser that stops answering is killed and started again on the next job.

Callers block (:meth:`Chromium.run`); the Playwright objects live on the browser's own event loop and thread, so no
caller's event loop ever waits on the browser.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
        "--mute-audio", "--js-flags=--max-old-space-size=512"]
CLOSE_TIMEOUT_S = 5.0
LAUNCH_TIMEOUT_S = 60.0


class BrowserUnavailable(Exception):
    """Chromium (or Playwright) cannot be started here: the message says why."""


class Chromium:
    def __init__(self, path: Path, max_concurrent: int = 2) -> None:
        self.path = path
        self.max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._playwright: Any = None
        self._browser: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._launching: asyncio.Lock | None = None
        self._home = tempfile.TemporaryDirectory(prefix="diagram-chromium-")
        self.version: str | None = None
        self.blocked_requests = 0  # requests pages tried to make (all refused), for tests and logs

    # ---- the browser's thread --------------------------------------------------------------------------------
    def _start_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="diagram-chromium", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _ensure_browser(self) -> Any:
        if self._semaphore is None or self._launching is None:  # made on the browser's own event loop
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
            self._launching = asyncio.Lock()
        async with self._launching:  # jobs arriving together start one browser, not one each
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            await self._shutdown()
            return await self._launch()

    async def _launch(self) -> Any:
        if not self.path.exists():
            raise BrowserUnavailable(f"Chromium is not installed at {self.path}")
        try:
            from playwright.async_api import async_playwright
        except ImportError:
            raise BrowserUnavailable("the playwright Python package is not installed") from None
        self._playwright = await async_playwright().start()
        # a bare environment: nothing of this process's (an auth token, say) is in the browser's
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self._home.name}
        self._browser = await asyncio.wait_for(self._playwright.chromium.launch(
            executable_path=str(self.path), headless=True, args=ARGS, env=env), LAUNCH_TIMEOUT_S)
        self.version = self._browser.version
        return self._browser

    async def _shutdown(self, only: Any = None) -> None:
        """Close the browser (and Playwright); with ``only``, just if that is still the browser in use."""
        if only is not None and self._browser is not only:
            return  # another job has already replaced it
        browser, playwright = self._browser, self._playwright
        self._browser = self._playwright = None
        if browser is not None:
            try:
                await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT_S)
            except Exception:  # a browser that does not answer: the driver's exit below kills it
                log.warning("Chromium did not close in %.0f s", CLOSE_TIMEOUT_S)
        if playwright is not None:
            try:
                await asyncio.wait_for(playwright.stop(), CLOSE_TIMEOUT_S)
            except Exception:
                log.warning("Playwright did not stop in %.0f s", CLOSE_TIMEOUT_S)

    async def _job(self, job: Callable[[Any], Awaitable[T]], timeout_s: float, javascript: bool,
                   viewport: tuple[int, int]) -> T:
        async with asyncio.timeout(timeout_s):
            browser = await self._ensure_browser()
            assert self._semaphore is not None
            async with self._semaphore:
                context = await browser.new_context(java_script_enabled=javascript, offline=True,
                                                    service_workers="block", accept_downloads=False,
                                                    viewport={"width": viewport[0], "height": viewport[1]})
                try:
                    await context.route("**/*", self._refuse)
                    page = await context.new_page()
                    return await job(page)
                finally:
                    try:
                        await asyncio.wait_for(context.close(), CLOSE_TIMEOUT_S)
                    except Exception:  # the browser itself hangs: start a new one next time
                        log.warning("a page of Chromium did not close: restarting Chromium")
                        await self._shutdown(only=browser)

    async def _refuse(self, route: Any) -> None:
        self.blocked_requests += 1
        log.warning("a diagram page asked for %s: refused", route.request.url[:200])
        await route.abort("blockedbyclient")

    # ---- callers' side ---------------------------------------------------------------------------------------
    def run(self, job: Callable[[Any], Awaitable[T]], *, timeout_s: float, javascript: bool = True,
            viewport: tuple[int, int] = (1280, 1024)) -> T:
        """Run ``job(page)`` on a fresh page; ``TimeoutError`` past ``timeout_s`` (its page is closed by then)."""
        loop = self._start_thread()
        future = asyncio.run_coroutine_threadsafe(self._job(job, timeout_s, javascript, viewport), loop)
        try:
            return future.result(timeout_s + 2 * CLOSE_TIMEOUT_S + LAUNCH_TIMEOUT_S)
        except concurrent.futures.TimeoutError:  # the browser's loop itself is stuck: should not happen
            future.cancel()
            raise TimeoutError from None

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(2 * CLOSE_TIMEOUT_S + 1)
        except Exception:
            log.warning("Chromium did not shut down cleanly")
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
