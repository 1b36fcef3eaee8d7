"""Running a request through the request front for an HTTP route: admission before any status is sent, the choices
of one request merged, and the client's disconnect watched while nothing is being sent.

    streams = await admit(service, messages, request_id=rid)          # raises the refusal (→ its HTTP status)
    async with contextlib.aclosing(merged(streams)) as events:        # (index, event) in arrival order
        ...

Closing ``merged`` (a disconnect, a failed choice) closes every choice's stream, which stops its generation: the
request front ends it and gives its place back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request

from wire import protocol as p

from ..events import AdapterHandle, Failed, FrontEvent
from ..service import Service

T = TypeVar("T")
Stream = AsyncGenerator[FrontEvent, None]


class ClientGone(Exception):
    """The client disconnected before its reply was sent."""


async def admit(service: Service, messages: list[p.Generate], *, request_id: str,
                adapter: AdapterHandle | None = None, timeout: tuple[float, str] | None = None) -> list[Stream]:
    """Admit every choice of a request, or none: the first refusal closes the ones admitted and is raised."""
    streams: list[Stream] = []
    for i, message in enumerate(messages):
        stream = service.generate(message, request_id=f"{request_id}-{i}" if len(messages) > 1 else request_id,
                                  adapter=adapter, timeout=timeout)
        first = await anext(stream)  # accepted or refused, without awaiting anything
        if isinstance(first, Failed):
            await stream.aclose()
            for admitted in streams:
                await admitted.aclose()
            raise first.error
        streams.append(stream)
    return streams


async def merged(streams: list[Stream]) -> AsyncGenerator[tuple[int, FrontEvent], None]:
    """The events of every choice as they come, with the choice's index. Closing this closes them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for event in only:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, FrontEvent | None]] = asyncio.Queue()

    async def pump(index: int, stream: Stream) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    queue.put_nowait((index, event))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the body must have been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled and ClientGone raised."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def first_event(events: AsyncIterator[tuple[int, FrontEvent]]) -> tuple[int, FrontEvent] | None:
    """The next event, or None when the stream has ended."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
