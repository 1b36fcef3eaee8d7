"""One WebSocket connection: parse → dispatch → send. Nothing else.

The work of a ``generate`` is the request front's (:meth:`Service.generate`); what the connection must remember —
its running generations, the order of its adapter changes, exactly one terminal message per ``generate`` — is its
:class:`~inference_worker.connection.ConnectionState`, which does no I/O. Every ``generate`` ends with exactly one
terminal message (``done`` or ``error``), whatever happens: bad input, a full queue, an adapter failure, a cancel, a
deadline, a shutdown. The connection stays usable after any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wire import protocol as p
from wire.errors import InternalError, ProtocolError, ServiceError, SessionError

from .connection import AdapterChange, ConnectionState, Generation
from .events import AdapterHandle, Completed, Failed, FrontEvent, TextDelta
from .service import Service

log = logging.getLogger(__name__)
T = TypeVar("T")
# Frames longer than this are parsed on the service's parse thread, off the event loop (a 16 MiB frame takes tens
# of milliseconds to load); shorter ones cost microseconds and are parsed in place.
_PARSE_IN_PLACE_CHARS = 64 * 1024
_TURN_S = 0.002  # longest run of one connection's buffered requests before the others get the event loop


class Session:
    def __init__(self, service: Service, ws: ServerConnection) -> None:
        self.service = service
        self.ws = ws
        default = service.default_adapter
        self.state = ConnectionState(service.settings.max_sessions_per_connection,
                                     AdapterHandle(default.ref, default.key) if default is not None else None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.peer = peer(ws)

    # ---- connection loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        connections = self.service.connections
        connections.add(self.state)
        self.service.metrics.connections.set(len(connections))
        loop = asyncio.get_running_loop()
        try:
            turn_started = loop.time()
            async for frame in self.ws:
                await self.dispatch(frame)
                # Frames already buffered are returned without a suspension, and so are replies while the socket's
                # write buffer has room: a client that pipelines thousands of requests would keep the event loop
                # from every other connection until its backlog is done. Give the others a turn every few ms.
                if loop.time() - turn_started > _TURN_S:
                    await asyncio.sleep(0)
                    turn_started = loop.time()
        except ConnectionClosed:
            pass
        finally:
            self._disconnected()  # a client that disconnects cancels all of its generations
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.state.adapter = None
            connections.discard(self.state)
            self.service.metrics.connections.set(len(connections))

    async def dispatch(self, frame: str | bytes) -> None:
        try:
            message = await self._parse(frame)
        except ProtocolError as exc:
            if exc.message_type == "generate":
                self.service.count_refused(exc)
            await self.send(p.error_message(exc, session_id=exc.session_id), exc.request_id)
            return
        match message:
            case p.Ping():
                await self.send(p.Pong(), message.request_id)
            case p.StatusRequest():
                await self.send(self.service.status(), message.request_id)
            case p.ListAdapters():
                self._spawn(self._list_adapters(message.request_id))
            case p.LoadAdapter():
                self._spawn(self._load_adapter(message, self.state.change_adapter()))
            case p.Cancel():
                try:
                    gen = self.state.find(message.session_id)
                except SessionError as exc:
                    await self.send(p.error_message(exc, session_id=message.session_id), message.request_id)
                else:
                    self.service.abort(gen.request_id)
            case p.Generate():
                await self._start_generation(message)

    async def _parse(self, frame: str | bytes) -> Any:
        if len(frame) <= _PARSE_IN_PLACE_CHARS:
            return p.parse_client_message(frame, self.service.parse_limits)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.service.parse_pool, p.parse_client_message, frame,
                                          self.service.parse_limits)

    async def send(self, message: Any, request_id: str | None = None) -> bool:
        """Send a reply; ``request_id``: that of the client message it answers, echoed when there was one."""
        if self.state.closed:
            return False
        if self.ws.state is not State.OPEN:
            # The client's close frame has arrived (CLOSING) while our replies may still be queued behind a client
            # that stopped reading: sending now would wait for the closing handshake (up to its timeout), and the
            # frames loop only ends when TCP closes. Stop the connection's generations now, not seconds later.
            self._disconnected()
            return False
        if request_id is not None:
            message.request_id = request_id
        try:
            await self.ws.send(p.encode(message))
            return True
        except ConnectionClosed:
            self._disconnected()
            return False

    def _disconnected(self) -> None:
        for gen in self.state.close():
            self.service.abort(gen.request_id)

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- generation ------------------------------------------------------------------------------------------
    async def _start_generation(self, message: p.Generate) -> None:
        session_id = message.session_id or p.new_session_id()
        try:
            gen = self.state.start(session_id, message.request_id)
        except SessionError as exc:
            self.service.count_refused(exc)
            await self.send(p.error_message(exc, session_id=session_id), message.request_id)
            return
        stream = self.service.generate(message, request_id=gen.request_id,
                                       adapter=self.state.adapter_for_generate())
        first = await anext(stream)  # accepted or refused, without waiting for anything
        if isinstance(first, Failed):
            await stream.aclose()
            self.state.end(gen)
            await self.send(p.error_message(first.error, session_id=session_id), gen.reply_to)
            return
        self._spawn(self._stream(gen, stream))

    async def _stream(self, gen: Generation, stream: AsyncGenerator[FrontEvent, None]) -> None:
        """Send the generation's text pieces as they come, then its one terminal message."""
        terminal: p.Done | p.Error | None = None
        try:
            async with contextlib.aclosing(stream):
                async for event in stream:
                    if isinstance(event, TextDelta):
                        await self.send(p.Token(content=event.text, session_id=gen.session_id), gen.reply_to)
                    elif isinstance(event, Completed):
                        terminal = p.Done(
                            content=event.content, session_id=gen.session_id, finish_reason=event.finish_reason,
                            usage=event.usage, timings=event.timings, adapter=event.adapter, seed=event.seed)
                    elif isinstance(event, Failed):
                        terminal = p.error_message(event.error, session_id=gen.session_id)
        except Exception as exc:  # a bug: still exactly one terminal message
            log.exception("generation %s failed", gen.session_id)
            terminal = p.error_message(InternalError(f"{type(exc).__name__}: {exc}"), session_id=gen.session_id)
        if terminal is None:
            terminal = p.error_message(InternalError("the request ended without a result"), session_id=gen.session_id)
        if self.state.end(gen):
            await self.send(terminal, gen.reply_to)

    # ---- adapters --------------------------------------------------------------------------------------------
    async def _load_adapter(self, message: p.LoadAdapter, change: AdapterChange) -> None:
        """Change this connection's adapter, after the changes sent before this one."""
        try:
            await change.turn()
            ref, rid = message.adapter_path, message.request_id
            if ref is None:
                change.apply(None)
                await self.send(p.AdapterUnloaded(), rid)
                return
            registry = self.service.registry
            assert registry is not None
            started = time.perf_counter()
            try:
                outcome = await registry.load(ref, self._progress(ref, rid))
            except ServiceError as exc:
                log.info("load_adapter %s from %s refused: %s", ref, self.peer, exc)
                await self.send(p.error_message(exc, adapter_path=ref), rid)
                return
            entry = outcome.entry
            change.apply(AdapterHandle(ref, entry.key))
            await self.send(p.AdapterLoaded(
                adapter_path=ref, name=entry.name, digest=entry.digest, rank=entry.rank, alpha=entry.alpha,
                target_modules=entry.target_modules, cached=outcome.cached,
                load_ms=round((time.perf_counter() - started) * 1000, 2),
            ), rid)
        finally:
            change.keep()  # failed or not, the generates sent after it go on

    def _progress(self, ref: str, request_id: str | None) -> Callable[[str, int, int | None], None]:
        """A progress callback usable from any thread; download progress is sent at most every 100 ms."""
        loop = asyncio.get_running_loop()
        last_at = [0.0]
        last_stage = [""]

        def report(stage: str, done: int, total: int | None) -> None:
            now = time.monotonic()
            if stage == last_stage[0] and now - last_at[0] < 0.1 and (total is None or done < total):
                return
            last_at[0], last_stage[0] = now, stage
            message = p.AdapterProgress(adapter_path=ref, stage=stage, bytes=done, total=total)  # type: ignore[arg-type]
            loop.call_soon_threadsafe(lambda: self._spawn(self.send(message, request_id)))

        return report

    async def _list_adapters(self, request_id: str | None) -> None:
        try:
            await self.send(await self.service.list_adapters(), request_id)
        except ServiceError as exc:
            await self.send(p.error_message(exc), request_id)


def peer(ws: ServerConnection) -> str:
    """The connection's remote address as host:port, for logs."""
    with contextlib.suppress(Exception):
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    return "?"
