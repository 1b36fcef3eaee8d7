"""One request's events on their way from an engine to the consumer of its ``generate``: written once for all engines.

Every engine's ``generate`` has the same shape: start the request (a sequence handed to a scheduler thread, a task
that drives vLLM, a remote call to a replica) with an :class:`Outbox` to put its events in, register it so that
:meth:`~inference_worker.engines.base.Engine.abort` finds it, yield its events until its ``Finished``, and abort it
if the consumer stopped listening first (it closed the stream, or its task was cancelled). :class:`RequestStreams`
is that shape; an engine supplies how a request starts and how it is aborted::

    self.streams = RequestStreams(abort=lambda seq: seq.stop())
    ...
    def generate(self, request):
        return self.streams.stream(request, start=lambda outbox: self._start(request, outbox))

    def abort(self, request_id):
        self.streams.abort(request_id)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Generic, TypeVar

from wire.errors import ServiceError

from .base import EngineRequest, Event, Finished

H = TypeVar("H")  # the engine's handle on one running request


class Outbox:
    """Where an engine puts one request's events: from the event loop (:meth:`put`) or from any thread
    (:meth:`put_threadsafe`, e.g. a scheduler thread delivering one step's events at once)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Sequence[Event]] = asyncio.Queue()

    def put(self, *events: Event) -> None:
        self._queue.put_nowait(events)

    def put_threadsafe(self, events: Sequence[Event]) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, events)

    async def get(self) -> Sequence[Event]:
        return await self._queue.get()


class RequestStreams(Generic[H]):
    """The requests an engine is streaming, by request id, each with the engine's handle on it.

    ``abort(handle)`` stops one request so that its events end with ``Finished(reason="cancelled")``; it must be
    idempotent and, since :meth:`abort` may be called from any thread, thread-safe.
    """

    def __init__(self, abort: Callable[[H], None]) -> None:
        self._abort = abort
        self._open: dict[str, H] = {}

    async def stream(self, request: EngineRequest, start: Callable[[Outbox], H]) -> AsyncGenerator[Event, None]:
        """The request's events. ``start(outbox)`` starts it and returns its handle; a :class:`ServiceError` it
        raises (the engine refuses the request at once) ends the stream with that error."""
        request_id = request.request_id
        if request_id in self._open:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        outbox = Outbox()
        try:
            handle = start(outbox)
        except ServiceError as exc:
            yield Finished.failed(exc, request.received_at)
            return
        self._open[request_id] = handle
        finished = False
        try:
            while not finished:
                for event in await outbox.get():
                    finished = isinstance(event, Finished)
                    yield event
        finally:
            del self._open[request_id]
            if not finished:  # the consumer stopped listening: stop the request
                self._abort(handle)

    def abort(self, request_id: str) -> None:
        """Stop a request (any thread; idempotent; nothing for a request that is not streaming)."""
        handle = self._open.get(request_id)
        if handle is not None:
            self._abort(handle)

    def handles(self) -> list[H]:
        """The handles of the requests streaming now."""
        return list(self._open.values())
