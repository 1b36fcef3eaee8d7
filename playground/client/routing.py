"""Reply routing: one WebSocket to the worker and the requests waiting on it.

Every frame the worker sends is validated (:func:`wire.protocol.parse_server_message`) and handed to the request it
answers: a generation's ``token``/``done``/``error`` by its ``session_id``; a ``load_adapter``'s progress and result,
and every other reply, by the ``request_id`` the request was sent with, which the worker echoes. A frame outside the
protocol fails the request it names (or the oldest one waiting); when the connection closes, every request on it
fails together. No I/O here besides sending on the socket the caller opened: :class:`~playground.client.WorkerClient`
opens connections and reads frames into :meth:`Connection.route`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from wire.errors import ErrorCode
from wire.protocol import AdapterProgress, Done, Error, Token, parse_server_message

from .errors import BadFrame, ClientCode, PlaygroundError, WorkerError

log = logging.getLogger(__name__)


class Connection:
    """One WebSocket and the requests waiting on it (all of them fail together when it closes).

    A generation's replies carry its ``session_id``; every other request is sent with a ``request_id`` of its own,
    which the worker echoes on every reply to it.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.streams: dict[str, asyncio.Queue[Any]] = {}  # by session_id
        self.loads: dict[str, asyncio.Queue[Any]] = {}  # by request_id
        self.waiters: dict[str, asyncio.Future[Any]] = {}  # by request_id, in the order they were sent
        self.reader: asyncio.Task[None] | None = None
        self.error: PlaygroundError | None = None
        self._ids = itertools.count(1)

    def new_request_id(self) -> str:
        return str(next(self._ids))

    @property
    def open(self) -> bool:
        return self.error is None and self.ws.state is State.OPEN

    def fail(self, error: PlaygroundError) -> None:
        self.error = error
        for queue in [*self.streams.values(), *self.loads.values()]:
            queue.put_nowait(error)
        for future in self.waiters.values():
            if not future.done():
                future.set_exception(error.copy())
        self.streams.clear()
        self.loads.clear()
        self.waiters.clear()

    def resolve(self, request_id: str | None, value: Any) -> bool:
        """Answer the request sent with ``request_id`` (``None``: the oldest one waiting); False when none waits."""
        if request_id is None:
            request_id = next((rid for rid, future in self.waiters.items() if not future.done()), None)
        future = self.waiters.pop(request_id, None) if request_id is not None else None
        if future is None or future.done():
            return False
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
        return True

    def route(self, frame: str | bytes) -> None:
        """Hand one frame from the worker to the request it answers."""
        if isinstance(frame, bytes):
            log.warning("ignoring a binary frame from the worker (the protocol has none)")
            return
        try:
            message = parse_server_message(frame)
        except ValidationError as exc:
            self._route_bad_frame(frame, exc)
            return
        if isinstance(message, Token | Done):
            self._to_stream(message.session_id, message)
        elif isinstance(message, Error) and message.session_id is not None:
            if message.code == ErrorCode.UNKNOWN_SESSION:
                # The answer to a cancel that came too late: the generation's own done is (or was) on its way.
                log.debug("cancel of %s came after its end", message.session_id)
            else:
                self._to_stream(message.session_id, message)
        elif message.request_id in self.loads:
            self.loads[message.request_id].put_nowait(message)
            if not isinstance(message, AdapterProgress):  # the load's last message
                del self.loads[message.request_id]
        elif isinstance(message, Error):
            # A failed status or list_adapters, or (without a request_id) a request the worker could not parse.
            error = WorkerError.from_message(message)
            if not self.resolve(message.request_id, error):
                log.log(logging.DEBUG if message.request_id else logging.WARNING,
                        "an error from the worker that no request waits for: %s", error)
        elif message.request_id is None or not self.resolve(message.request_id, message):
            log.debug("a %s reply that no request waits for (it timed out)", message.type)

    def _to_stream(self, session_id: str, message: Any) -> None:
        queue = self.streams.get(session_id)
        if queue is not None:
            queue.put_nowait(message)

    def _route_bad_frame(self, frame: str, exc: ValidationError) -> None:
        error = BadFrame(ClientCode.BAD_FRAME, f"the worker sent a frame outside the protocol: {frame[:200]!r} "
                                               f"({exc.error_count()} validation errors)")
        log.warning("%s", error)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            data = json.loads(frame)
            session_id, request_id = data.get("session_id"), data.get("request_id")
            if session_id in self.streams:
                self.streams[session_id].put_nowait(error)
                return
            if request_id in self.loads:
                self.loads.pop(request_id).put_nowait(error)
                return
            if self.resolve(request_id, error):
                return
        self.resolve(None, error)
