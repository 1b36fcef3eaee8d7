"""The WebSocket server: websockets' asyncio ``serve``, HTTP health/ready/metrics in ``process_request``, SIGTERM.

The port opens at once, so ``/health`` and ``/ready`` answer while the model loads; WebSocket handshakes are refused
with 503 until the model is loaded (the worker never accepts a connection it cannot serve), beyond
``MAX_CONNECTIONS``, and while it drains after SIGTERM — the port stays open then, so that load balancers see
``/ready`` turn 503 instead of a refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from .config import Settings
from .http.server import HttpServer
from .metrics import CONTENT_TYPE
from .service import Service
from .session import Session, peer

log = logging.getLogger(__name__)
_READ_CHUNK_BYTES = 16 * 1024  # the most read from one socket per event-loop callback (see _handle)


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def _json(status: HTTPStatus, payload: dict[str, Any]) -> Response:
    return _response(status, json.dumps(payload).encode() + b"\n", "application/json")


_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie"}


class RedactSecrets(logging.Filter):
    """Keep the token out of websockets' debug log of handshakes (request line and headers, at LOG_LEVEL=debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == "< %s: %s" and isinstance(args, tuple) and len(args) == 2:
            if str(args[0]).lower() in _SECRET_HEADERS:
                record.args = (args[0], "[redacted]")
        elif record.msg == "< %s %s %s" and isinstance(args, tuple) and len(args) == 3 and "token=" in str(args[1]):
            record.args = (args[0], _redact_query(str(args[1])), args[2])
        return True


def _redact_query(path: str) -> str:
    head, _, query = path.partition("?")
    parts = [("token=[redacted]" if part.startswith("token=") else part) for part in query.split("&")]
    return head + "?" + "&".join(parts)


def _install_redaction() -> None:
    logger = logging.getLogger("websockets.server")
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())


class WorkerServer:
    """Owns the service and the listening socket. ``start`` returns once the port is open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = Service(settings)
        self.server: Server | None = None
        self.http: HttpServer | None = None  # the HTTP API (HTTP_PORT), when on
        self.loading: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int | None:
        """The HTTP API's port (None when HTTP_PORT is off)."""
        return self.http.port if self.http is not None else None

    async def start(self, *, load: bool = True) -> None:
        s = self.settings
        _install_redaction()
        self.server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=self._process_request,
            max_size=s.max_message_bytes,
            max_queue=s.ws_max_queue,
            compression="deflate" if s.ws_compression else None,
            ping_interval=s.ws_ping_interval_s,
            ping_timeout=s.ws_ping_timeout_s,
            server_header="inference-worker",
        )
        log.info("listening on ws://%s:%d (HTTP /health /ready /metrics)", s.host, self.port)
        if s.http_port is not None:
            self.http = HttpServer(self.service, ws_port=self.port)
            try:
                await self.http.start()
            except BaseException:
                self.server.close()
                await self.server.wait_closed()
                raise
        if load:
            self.loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await self.service.start()
        except Exception as exc:
            self.service.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the model could not be loaded")
            raise
        log.info("ready: %s on %s", self.service.model_name, self.service.engine.info.device)  # type: ignore[union-attr]

    async def wait_ready(self) -> None:
        assert self.loading is not None
        await self.loading

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        token = self.settings.auth_token
        if token is None:
            return True
        expected = token.get_secret_value().encode()
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given:
            given = (parse_qs(urlsplit(request.path).query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), expected)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # No await in here: websockets then sends the response without yielding, so the connection count checked
        # below cannot be raced past by concurrent handshakes.
        try:
            return self._route(request)
        except MultipleValuesError as exc:  # e.g. two Authorization or Upgrade headers: a client error, not ours
            header = str(exc.args[0]) if exc.args else "?"
            log.info("refused a request from %s: duplicate %s header", peer(connection), header)
            return _json(HTTPStatus.BAD_REQUEST, {"error": "bad_request", "message": f"duplicate {header} header"})

    def _route(self, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        service = self.service
        if path == "/health":
            status = HTTPStatus.INTERNAL_SERVER_ERROR if service.load_error else HTTPStatus.OK
            return _json(status, service.health())
        if path == "/ready":
            return _json(HTTPStatus.OK if service.serving else HTTPStatus.SERVICE_UNAVAILABLE, service.health())
        if not self._authorized(request):
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "unauthorized", "message": "missing or wrong token"})
        if path == "/metrics":
            return _response(HTTPStatus.OK, service.render_metrics(), CONTENT_TYPE)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _json(HTTPStatus.NOT_FOUND, {"error": "not_found", "paths": ["/health", "/ready", "/metrics"],
                                                "websocket": "any other path"})
        if service.draining:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "shutting_down"})
        if not service.ready:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "loading", "message": "the model is loading"})
        if not service.engine_available:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "unavailable",
                                                          "message": "no model replica is available; retry later"})
        assert self.server is not None
        if len(self.server.connections) >= self.settings.max_connections:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": "too_many_connections",
                "message": f"{self.settings.max_connections} connections are open (MAX_CONNECTIONS); retry later"})
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        # asyncio reads up to 256 KiB per callback and websockets parses every frame in it at once: 12,000 small
        # frames (~0.1 s), or 16 compressed frames that inflate to 16 MiB each. A smaller read bounds what one
        # callback can cost; a 16 MiB frame still arrives in ~30 ms.
        if hasattr(ws.transport, "max_size"):  # asyncio's socket transports
            ws.transport.max_size = _READ_CHUNK_BYTES
        await Session(self.service, ws).run()

    # ---- shutdown --------------------------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None, notice_s: float | None = None) -> None:
        """Drain: refuse new connections and generations with 503 / ``shutting_down`` while the port stays open
        (at least ``notice_s``, and while running generations finish, up to ``grace_s``); then close the port and
        the connections."""
        s = self.settings
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(
                s.shutdown_grace_s if grace_s is None else grace_s,
                s.shutdown_notice_s if notice_s is None else notice_s,
            ))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float, notice_s: float) -> None:
        log.info("shutting down: /ready and new connections answer 503 for %.0f s at least, running generations "
                 "get %.0f s", notice_s, grace_s)
        assert self.server is not None
        self.service.draining = True
        notice = asyncio.create_task(asyncio.sleep(notice_s))
        if self.loading is not None and not self.loading.done():
            self.loading.cancel()
            with contextlib.suppress(BaseException):
                await self.loading
        await self.service.drain(grace_s)
        await notice
        if self.http is not None:
            await self.http.stop()
        self.server.close(close_connections=False)
        closing = [
            asyncio.create_task(conn.close(1001, "server shutting down"))
            for conn in list(self.server.connections)
        ]
        if closing:
            await asyncio.wait(closing, timeout=5)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), timeout=10)
        await self.service.close()
        log.info("stopped")


async def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    worker = WorkerServer(settings)
    await worker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    assert worker.loading is not None
    done, _ = await asyncio.wait({worker.loading, asyncio.ensure_future(stop.wait())},
                                 return_when=asyncio.FIRST_COMPLETED)
    if worker.loading in done and worker.loading.exception() is not None:
        await worker.stop(0, 0)  # never ready, so no load balancer to give notice to
        return 1
    await stop.wait()
    await worker.stop()
    return 0

