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

    @property
    def port(self) -> int:
        assert self.socket is not None
        return int(self.socket.getsockname()[1])

    async def start(self) -> None:
        s = self.service.settings
        assert s.http_port is not None
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        self.socket = socket.create_server((s.host, s.http_port), family=family, backlog=2048)
        config = uvicorn.Config(
            create_app(self.service, self.ws_port),
            lifespan="off",
            log_config=None,  # the worker's logging stays as configured
            log_level="debug" if s.log_level == "debug" else "warning",
            access_log=s.log_level == "debug",
            server_header=False,
            date_header=True,
            # Each connection may hold a body of up to MAX_MESSAGE_BYTES: the same bound as WebSocket connections.
            limit_concurrency=s.max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ws="none",
        )
        self.server = _Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("HTTP API on http://%s:%d (docs: /docs, OpenAI-compatible: /v1)", s.host, self.port)

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
        if not self.task.done():
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
