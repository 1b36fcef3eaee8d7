"""Run a real worker in a background thread with its own event loop (tests, benchmarks, notebooks).

    with EmbeddedWorker(Settings(model_name=..., port=0)) as worker:
        connect(worker.url)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .config import Settings
from .server import WorkerServer

T = TypeVar("T")


class EmbeddedWorker:
    def __init__(self, settings: Settings, *, ready_timeout: float = 300.0) -> None:
        self.settings = settings
        self.ready_timeout = ready_timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="embedded-worker", daemon=True)
        self.server: WorkerServer | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the worker's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> EmbeddedWorker:
        self.thread.start()

        async def _start() -> WorkerServer:
            server = WorkerServer(self.settings)
            await server.start()
            await server.wait_ready()
            return server

        try:
            self.server = self.call(_start(), self.ready_timeout)
        except BaseException:
            self._stop_loop()
            raise
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        """The HTTP API's base URL (HTTP_PORT; 0 in tests: a free port)."""
        assert self.server is not None and self.server.http_port is not None, "HTTP_PORT is off"
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def service(self) -> Any:
        assert self.server is not None
        return self.server.service

    def stop(self, grace_s: float = 2.0, notice_s: float = 0.0) -> None:
        """Drain and stop: ``notice_s`` of 503 before the port closes (SHUTDOWN_NOTICE_S; none by default here)."""
        if self.server is not None:
            self.call(self.server.stop(grace_s, notice_s), timeout=grace_s + notice_s + 30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)

    def __enter__(self) -> EmbeddedWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
