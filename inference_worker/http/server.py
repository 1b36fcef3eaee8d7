"""The HTTP API's server: uvicorn, in the worker's own event loop, beside the WebSocket server.

    http = HttpServer(service)
    await http.start()      # the port is open (health and readiness answer while the model loads)
    ...
    await http.stop()       # after the service drained: running requests have ended

uvicorn's own signal handling is off: the worker's (SIGTERM drains both servers) is the one that counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from ..service import Service
from .app import create_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the worker handles SIGTERM/SIGINT
        yield


class HttpServer:
    def __init__(self, service: Service, ws_port: int | None = None) -> None:
        self.service = service
        self.ws_port = ws_port
        self.server: _Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.socket: socket.socket | None = None
        self.app: Any = None
        self.stopping = False

    @property
    def port(self) -> int:
        assert self.socket is not None
        return int(self.socket.getsockname()[1])

    async def start(self) -> None:
        s = self.service.settings
        assert s.http_port is not None
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        self.socket = socket.create_server((s.host, s.http_port), family=family, backlog=2048)
        # asyncio turns Nagle's algorithm off only on sockets created as IPPROTO_TCP (create_server's are protocol 0):
        # without this, an event written right after the headers waits for the client's delayed ACK (up to 40 ms on
        # Linux) on a kept-alive connection. Accepted connections inherit it.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.app = create_app(self.service, self.ws_port)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # the worker's logging stays as configured
            log_level="debug" if s.log_level == "debug" else "warning",
            access_log=s.log_level == "debug",
            server_header=False,
            date_header=True,
            # Requests in flight are bounded by MAX_CONNECTIONS in guards.py (with the API's error body); this is
            # uvicorn's backstop on open connections (beyond it answers a plain 503).
            limit_concurrency=4 * s.max_connections + 16,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ws="none",
        )
        self.server = server = _Server(config)
        self.task = asyncio.create_task(self._serve(server, self.socket))
        try:
            while not server.started:
                if self.task.done():
                    self.task.result()  # raises what stopped it
                    raise RuntimeError("the HTTP server stopped while starting")
                await asyncio.sleep(0.01)
        except BaseException:
            await self.stop()
            raise
        self.task.add_done_callback(self._ended)
        log.info("HTTP API on http://%s:%d (docs: /docs, OpenAI-compatible: /v1)", s.host, self.port)

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process when it cannot start: here, an error of start()
            raise RuntimeError(f"the HTTP server could not start (uvicorn exited with {exc.code})") from None

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self.stopping:
            return
        # The HTTP API died on its own: say so where orchestrators look (/health turns 500).
        reason = "stopped" if task.cancelled() or task.exception() is None else repr(task.exception())
        log.error("the HTTP API stopped unexpectedly: %s", reason)
        self.service.load_error = f"HTTPServerStopped: {reason}"

    async def stop(self) -> None:
        """Close the port; requests still open get uvicorn's graceful shutdown (5 s), then are cancelled."""
        self.stopping = True
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
            if not self.task.done():
                self.server.force_exit = True
                self.task.cancel()
                with contextlib.suppress(BaseException):
                    await self.task
        if self.app is not None:
            self.app.state.drawing.shutdown(wait=False, cancel_futures=True)
        if self.socket is not None:
            self.socket.close()
