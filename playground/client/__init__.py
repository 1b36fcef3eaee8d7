"""An asyncio WebSocket client for the inference worker (the playground uses it; so can scripts).

    async with WorkerClient("ws://localhost:8765") as client:
        async for item in client.generate([user_message("Describe it.", image=png)], max_tokens=256):
            if isinstance(item, Done):
                print(item.timings)
            else:
                print(item, end="")

One client holds at most one connection, opened on the first request. Several requests may run on it at once (two
generations of an A/B comparison, a status request beside them): a reader task routes every server frame, validated
with :func:`wire.protocol.parse_server_message`, to the request it answers: a generation's by its ``session_id``,
every other one by the ``request_id`` it was sent with, which the worker echoes. When the connection drops — the
worker restarted, say — every request on it fails with :class:`WorkerUnavailable` and the next request opens a new
connection. Closing the client closes the socket, which cancels the connection's generations on the worker.

Failures are typed and carry a stable ``code`` and ``retryable``: :class:`WorkerError` (the worker answered with an
``error``; the code is the worker's), :class:`WorkerUnavailable` (``unreachable``, ``loading``, ``shutting_down``,
``unauthorized``, ``handshake_failed``, ``timeout``, ``disconnected``, ``bad_url``), :class:`InvalidRequest` (refused
before sending, or ``message_too_big``) and :class:`BadFrame` (the worker sent something outside the protocol). The
codes the client finds itself are :class:`ClientCode`; the worker's are :class:`wire.errors.ErrorCode`.

The parts: :mod:`.errors` (the error hierarchy), :mod:`.messages` (building and checking requests), :mod:`.routing`
(one connection and the requests waiting on it: which reply answers which request), this module (connecting, the
API) and :mod:`.__main__`, the command line: ``python -m playground.client --image
diagram.png [--adapter NAME] [--url ws://...] "prompt"`` streams the answer to stdout and prints timings to stderr
(see ``--help``); ``--image process.bpmn`` (or any diagram source :mod:`diagrams` draws) is rendered as a PNG first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from wire.errors import ErrorCode
from wire.protocol import (
    AdapterItem,
    AdapterLoaded,
    AdapterProgress,
    Adapters,
    AdapterUnloaded,
    Done,
    Error,
    Status,
    Token,
)

from .errors import (
    EXIT_FAILED,
    EXIT_RETRY,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    BadFrame,
    ClientCode,
    InvalidRequest,
    PlaygroundError,
    WorkerError,
    WorkerUnavailable,
    closed_error,
    exit_status,
    handshake_error,
)
from .messages import (
    UNSET,
    describe_progress,
    encode_request,
    generate_message,
    image_part,
    new_session_id,
    user_message,
)
from .routing import Connection

__all__ = [
    "DEFAULT_URL", "EXIT_FAILED", "EXIT_RETRY", "EXIT_UNAVAILABLE", "EXIT_USAGE", "UNSET", "BadFrame", "ClientCode",
    "InvalidRequest",
    "PlaygroundError", "WorkerClient", "WorkerError", "WorkerUnavailable", "describe_progress", "encode_request",
    "exit_status", "generate_message", "image_part", "new_session_id", "user_message",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://localhost:8765"


class WorkerClient:
    """A client of one worker; reconnects on the next request after the connection dropped.

    Use it from one event loop (the one it first connects in).
    """

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, open_timeout: float = 5.0,
                 reply_timeout: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.open_timeout = open_timeout
        self.reply_timeout = reply_timeout
        self.connections_opened = 0
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.open

    # ---- requests ----------------------------------------------------------------------------------------------
    async def ping(self) -> float:
        """Round trip time of a ``ping`` in seconds."""
        started = time.perf_counter()
        await self._request({"type": "ping"}, "pong")
        return time.perf_counter() - started

    async def status(self) -> Status:
        return await self._request({"type": "status"}, "status")  # type: ignore[no-any-return]

    async def list_adapters(self) -> list[AdapterItem]:
        reply: Adapters = await self._request({"type": "list_adapters"}, "adapters")
        return reply.items

    async def connect(self) -> None:
        """Open the connection now (requests open it when needed); raises :class:`WorkerUnavailable` as they do."""
        await self._connection()

    async def start_load(
        self, adapter_path: str | None
    ) -> AsyncGenerator[AdapterProgress | AdapterLoaded | AdapterUnloaded, None]:
        """Send ``load_adapter`` now and return its events, to be read later: a ``generate`` sent after this call
        returns runs with the new adapter, since the worker applies a connection's adapter changes in the order they
        were sent (pipelining saves a round trip). The events are those of :meth:`load_adapter_events`."""
        conn = await self._connection()
        request_id = conn.new_request_id()
        frame = encode_request({"type": "load_adapter", "adapter_path": adapter_path, "request_id": request_id})
        queue: asyncio.Queue[Any] = asyncio.Queue()
        conn.loads[request_id] = queue  # the router removes it when the load's last message arrives
        try:
            await self._send(conn, frame)
        except BaseException:
            conn.loads.pop(request_id, None)
            raise
        return self._load_events(conn, request_id, queue)

    async def _load_events(
        self, conn: Connection, request_id: str, queue: asyncio.Queue[Any]
    ) -> AsyncGenerator[AdapterProgress | AdapterLoaded | AdapterUnloaded, None]:
        try:
            while True:
                item = await queue.get()
                if isinstance(item, AdapterProgress):
                    yield item
                elif isinstance(item, AdapterLoaded | AdapterUnloaded):
                    yield item
                    return
                elif isinstance(item, Error):
                    raise WorkerError.from_message(item)
                else:
                    raise item.copy()
        finally:
            conn.loads.pop(request_id, None)

    async def load_adapter_events(
        self, adapter_path: str | None
    ) -> AsyncGenerator[AdapterProgress | AdapterLoaded | AdapterUnloaded, None]:
        """Make ``adapter_path`` this connection's adapter (``None``: the base model), yielding ``adapter_progress``
        while the worker downloads, verifies and loads it, then ``adapter_loaded`` (or ``adapter_unloaded``)."""
        async for item in await self.start_load(adapter_path):
            yield item

    async def load_adapter(
        self, adapter_path: str | None, on_progress: Callable[[AdapterProgress], object] | None = None
    ) -> AdapterLoaded | AdapterUnloaded:
        """:meth:`load_adapter_events` for callers that want only the result (progress goes to ``on_progress``)."""
        async for item in self.load_adapter_events(adapter_path):
            if isinstance(item, AdapterProgress):
                if on_progress is not None:
                    on_progress(item)
            else:
                return item
        raise AssertionError("unreachable: a load ends with adapter_loaded, adapter_unloaded or an error")

    async def generate(self, messages: Sequence[dict[str, Any]], **params: Any) -> AsyncGenerator[str | Done, None]:
        """Stream one generation: yields each token's text, then the ``done`` message, then stops.

        Parameters are those of :func:`generate_message` (``session_id`` picks the id :meth:`cancel` takes).
        An ``error`` from the worker raises :class:`WorkerError`. Leaving the loop early cancels the generation.
        """
        message = generate_message(messages, **params)
        frame = encode_request(message)
        session_id = message["session_id"]
        conn = await self._connection()
        if session_id in conn.streams:
            raise InvalidRequest(ErrorCode.DUPLICATE_SESSION, f"session_id {session_id!r} is already streaming")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        conn.streams[session_id] = queue
        finished = False
        try:
            await self._send(conn, frame)
            while True:
                item = await queue.get()
                if isinstance(item, Token):
                    yield item.content
                elif isinstance(item, Done):
                    finished = True
                    conn.streams.pop(session_id, None)  # ended, even if the caller never resumes this generator
                    yield item
                    return
                elif isinstance(item, Error):
                    finished = True
                    raise WorkerError.from_message(item)
                else:
                    finished = True
                    raise item.copy()
        finally:
            conn.streams.pop(session_id, None)
            if not finished and conn.open:  # the caller left early: stop the work nobody will read
                with contextlib.suppress(Exception):
                    await conn.ws.send(json.dumps({"type": "cancel", "session_id": session_id}))

    async def cancel(self, session_id: str) -> bool:
        """Ask the worker to stop a generation of this client; its stream then ends with ``done`` (``cancelled``).

        Returns False when no such generation streams on the current connection (it already ended, or it ran on a
        connection that has closed, which cancelled it).
        """
        conn = self._conn
        if conn is None or not conn.open or session_id not in conn.streams:
            return False
        await self._send(conn, encode_request({"type": "cancel", "session_id": session_id}))
        return True

    async def close(self) -> None:
        """Close the connection (the worker cancels the generations still running on it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        await conn.ws.close()
        if conn.reader is not None:
            with contextlib.suppress(Exception):
                await conn.reader
        if conn.error is None:
            conn.fail(WorkerUnavailable(ClientCode.DISCONNECTED, "the client was closed"))

    # ---- connection --------------------------------------------------------------------------------------------
    async def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.open:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.open:
                return conn
            if conn is not None:
                await self.close()
            ws = await self._open()
            conn = Connection(ws)
            conn.reader = asyncio.create_task(self._read(conn), name="worker-client-reader")
            self._conn = conn
            self.connections_opened += 1
            return conn

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        where = f"the worker at {self.url}"
        try:
            return await connect(self.url, open_timeout=self.open_timeout, max_size=None, close_timeout=2,
                                 additional_headers=headers, user_agent_header="inference-playground")
        except InvalidStatus as exc:
            raise handshake_error(where, exc) from None
        except InvalidURI:
            raise WorkerUnavailable(ClientCode.BAD_URL,
                                    f"{self.url!r} is not a WebSocket URL (ws://host:port)") from None
        except TimeoutError:
            raise WorkerUnavailable(ClientCode.TIMEOUT, f"{where} did not answer within {self.open_timeout:g} s",
                                    retryable=True) from None
        except ConnectionRefusedError:
            raise WorkerUnavailable(ClientCode.UNREACHABLE,
                                    f"{where} is not reachable: connection refused (is it running?)",
                                    retryable=True) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise WorkerUnavailable(ClientCode.UNREACHABLE, f"{where} is not reachable: {reason}",
                                    retryable=True) from None
        except InvalidHandshake as exc:
            raise WorkerUnavailable(ClientCode.HANDSHAKE_FAILED, f"{where} refused the WebSocket handshake: {exc}",
                                    retryable=True) from None

    async def _send(self, conn: Connection, frame: str) -> None:
        try:
            await conn.ws.send(frame)
        except ConnectionClosed:
            await self._wait_reader(conn)
            raise (conn.error or closed_error(self.url, conn.ws)).copy() from None

    async def _wait_reader(self, conn: Connection) -> None:
        if conn.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(conn.reader), 5)

    async def _request(self, message: dict[str, Any], reply: str) -> Any:
        conn = await self._connection()
        request_id = conn.new_request_id()
        frame = encode_request({**message, "request_id": request_id})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiters[request_id] = future
        try:
            await self._send(conn, frame)
            return await asyncio.wait_for(future, self.reply_timeout)
        except TimeoutError:
            raise WorkerUnavailable(ClientCode.TIMEOUT, f"no {reply} reply from the worker at {self.url} within "
                                                        f"{self.reply_timeout:g} s", retryable=True) from None
        finally:
            conn.waiters.pop(request_id, None)

    async def _read(self, conn: Connection) -> None:
        try:
            async for frame in conn.ws:
                conn.route(frame)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug in routing must not leave requests waiting forever
            log.exception("the worker client's reader failed")
            conn.fail(BadFrame(ClientCode.BAD_FRAME, f"could not handle a frame from the worker: {exc}"))
        finally:
            if conn.error is None:
                conn.fail(closed_error(self.url, conn.ws))
