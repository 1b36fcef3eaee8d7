"""One WebSocket connection: receive → validate → dispatch → stream. Owns its generations and their cancels.

Every ``generate`` ends with exactly one terminal message (``done`` or ``error``), whatever happens: bad input, a
full queue, an adapter failure, a cancel, a deadline, a shutdown. The connection stays usable after any error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from wire import protocol as p
from wire.errors import (
    CapacityError,
    DeadlineExceeded,
    ErrorCode,
    InternalError,
    ProtocolError,
    ServiceError,
    SessionError,
)

from .adapter_registry import Loaded
from .engines.base import ChatTurn, EngineRequest, Finished, TextDelta
from .service import Service

log = logging.getLogger(__name__)
T = TypeVar("T")
# Frames longer than this are parsed on the service's parse thread, off the event loop (a 16 MiB frame takes tens
# of milliseconds to load); shorter ones cost microseconds and are parsed in place.
_PARSE_IN_PLACE_CHARS = 64 * 1024
_TURN_S = 0.002  # longest run of one connection's buffered requests before the others get the event loop


class _Cancelled(Exception):
    """The generation was cancelled (or aborted) while it waited for something."""


@dataclass
class AdapterHandle:
    """A connection's active adapter: the reference it asked for and the content it resolved to."""

    ref: str
    key: str


@dataclass
class Generation:
    session_id: str
    reply_to: str | None = None  # the client's request_id of the generate, echoed on its tokens and its end
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the engine's id of this request
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    abort_error: ServiceError | None = None  # when set, the terminal message is this error
    task: asyncio.Task[None] | None = None
    on_stop: Callable[[], None] | None = None  # aborts the engine's request once it has one

    def stop(self, error: ServiceError | None = None) -> None:
        if error is not None and self.abort_error is None and not self.cancelled.is_set():
            self.abort_error = error
        self.cancelled.set()
        if self.on_stop is not None:
            self.on_stop()


class Session:
    def __init__(self, service: Service, ws: ServerConnection) -> None:
        self.service = service
        self.ws = ws
        self.generations: dict[str, Generation] = {}
        self.adapter: AdapterHandle | None = None
        self._adapter_change: asyncio.Task[AdapterHandle | None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.peer = _peer(ws)
        default = service.default_adapter
        if default is not None:
            self.adapter = AdapterHandle(default.ref, default.key)

    # ---- connection loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.service.sessions.add(self)
        self.service.metrics.connections.set(len(self.service.sessions))
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
            self._closed = True
            for gen in list(self.generations.values()):
                gen.stop()  # a client that disconnects cancels all of its generations
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._set_adapter(None)
            self.service.sessions.discard(self)
            self.service.metrics.connections.set(len(self.service.sessions))

    async def dispatch(self, frame: str | bytes) -> None:
        try:
            message = await self._parse(frame)
        except ProtocolError as exc:
            if exc.message_type == "generate":
                self.service.metrics.requests.labels(str(exc.code)).inc()
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
                previous = self._adapter_change
                self._adapter_change = self._spawn(self._load_adapter(message, previous))
            case p.Cancel():
                gen = self.generations.get(message.session_id)
                if gen is None:
                    await self.send(p.error_message(SessionError(
                        f"no running generation with session_id {message.session_id!r} on this connection",
                        code=ErrorCode.UNKNOWN_SESSION), session_id=message.session_id), message.request_id)
                else:
                    gen.stop()
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
        if self._closed:
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
        self._closed = True
        for gen in self.generations.values():
            gen.stop()

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def abort_all(self, error: ServiceError) -> None:
        for gen in list(self.generations.values()):
            gen.stop(error)

    # ---- adapters --------------------------------------------------------------------------------------------
    def _set_adapter(self, entry: Loaded | None, ref: str | None = None) -> None:
        self.adapter = AdapterHandle(ref or entry.ref, entry.key) if entry is not None else None

    async def _load_adapter(
        self, message: p.LoadAdapter, previous: asyncio.Task[AdapterHandle | None] | None
    ) -> AdapterHandle | None:
        """Change this connection's adapter; returns the connection's adapter once this change is applied."""
        if previous is not None:
            await asyncio.wait([previous])  # adapter changes apply in the order they were sent
        ref, rid = message.adapter_path, message.request_id
        if ref is None:
            self._set_adapter(None)
            await self.send(p.AdapterUnloaded(), rid)
            return None
        registry = self.service.registry
        assert registry is not None
        started = time.perf_counter()
        try:
            outcome = await registry.load(ref, self._progress(ref, rid))
        except ServiceError as exc:
            log.info("load_adapter %s from %s refused: %s", ref, self.peer, exc)
            await self.send(p.error_message(exc, adapter_path=ref), rid)
            return self.adapter
        entry = outcome.entry
        self._set_adapter(entry, ref)
        handle = self.adapter
        await self.send(p.AdapterLoaded(
            adapter_path=ref, name=entry.name, digest=entry.digest, rank=entry.rank, alpha=entry.alpha,
            target_modules=entry.target_modules, cached=outcome.cached,
            load_ms=round((time.perf_counter() - started) * 1000, 2),
        ), rid)
        return handle

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

    # ---- generation ------------------------------------------------------------------------------------------
    async def _start_generation(self, message: p.Generate) -> None:
        session_id = message.session_id or p.new_session_id()
        try:
            if session_id in self.generations:
                raise SessionError(f"session_id {session_id!r} is already running on this connection",
                                   code=ErrorCode.DUPLICATE_SESSION)
            limit = self.service.settings.max_sessions_per_connection
            if len(self.generations) >= limit:
                raise SessionError(f"this connection already runs {limit} generations (MAX_SESSIONS_PER_CONNECTION)",
                                   code=ErrorCode.TOO_MANY_SESSIONS, retryable=True)
            if self.service.draining:
                raise CapacityError("the worker is shutting down", code=ErrorCode.SHUTTING_DOWN)
            validator = self.service.validator
            assert validator is not None
            validator.check(message)
            self.service.admission.admit()
        except ServiceError as exc:
            self.service.metrics.requests.labels(str(exc.code)).inc()
            await self.send(p.error_message(exc, session_id=session_id), message.request_id)
            return
        gen = Generation(session_id, reply_to=message.request_id)
        self.generations[session_id] = gen
        # The adapter is the one this connection has once every load_adapter sent before this generate is applied.
        change = self._adapter_change
        adapter: asyncio.Task[AdapterHandle | None] | AdapterHandle | None = (
            change if change is not None and not change.done() else self.adapter
        )
        gen.task = self._spawn(self._generate(message, gen, adapter))

    async def _generate(
        self, message: p.Generate, gen: Generation, adapter: asyncio.Task[AdapterHandle | None] | AdapterHandle | None
    ) -> None:
        service = self.service
        settings = service.settings
        admitted = time.perf_counter()
        timeout = settings.generation_timeout_s
        deadline = asyncio.get_running_loop().call_later(
            timeout, gen.stop,
            DeadlineExceeded(f"generation did not finish within GENERATION_TIMEOUT_S={timeout:g}s"),
        )
        entry: Loaded | None = None
        terminal: Any = None
        try:
            turns = await self._until_cancelled(gen, asyncio.to_thread(self._turns, message))
            entry = await self._until_cancelled(gen, self._pin_adapter(message, adapter))
            terminal = await self._run(message, gen, turns, entry, admitted, time.monotonic() + timeout)
        except _Cancelled:
            terminal = None
        except ServiceError as exc:
            terminal = p.error_message(exc, session_id=gen.session_id)
        except Exception as exc:  # a bug: still exactly one terminal message
            log.exception("generation %s failed", gen.session_id)
            terminal = p.error_message(InternalError(f"{type(exc).__name__}: {exc}"), session_id=gen.session_id)
        finally:
            deadline.cancel()
            gen.on_stop = None
            if entry is not None and service.registry is not None:
                try:
                    await service.registry.unpin(entry)
                except Exception:  # an eviction that failed must not cost this request its terminal message
                    log.exception("releasing adapter %s after %s failed", entry.ref, gen.session_id)
            service.admission.release()
            if gen.abort_error is not None:
                terminal = p.error_message(gen.abort_error, session_id=gen.session_id)
            elif terminal is None:
                terminal = self._cancelled_done(message, gen, entry, admitted)
            outcome = terminal.code if isinstance(terminal, p.Error) else terminal.finish_reason
            service.metrics.requests.labels(str(outcome)).inc()
            del self.generations[gen.session_id]
            await self.send(terminal, gen.reply_to)

    def _max_tokens(self, message: p.Generate) -> int:
        assert self.service.validator is not None
        return self.service.validator.max_tokens(message)

    def _cancelled_done(self, message: p.Generate, gen: Generation, entry: Loaded | None, admitted: float) -> p.Done:
        """The ``done`` of a generation cancelled before it produced anything."""
        total = (time.perf_counter() - admitted) * 1000
        return p.Done(
            content="", session_id=gen.session_id, finish_reason="cancelled",
            usage=p.Usage(prompt_tokens=0, completion_tokens=0, max_tokens=self._max_tokens(message)),
            timings=p.Timings(queue_ms=round(total, 2), ttft_ms=None, total_ms=round(total, 2), tokens_per_s=None),
            adapter=entry.ref if entry else None,
        )

    async def _until_cancelled(self, gen: Generation, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the generation is cancelled first (then it finishes in the background)."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(gen.cancelled.wait())
        try:
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task in done and not gen.cancelled.is_set():
            try:
                return task.result()
            finally:
                # An exception's traceback holds this frame: drop the task so that the exception, the task and
                # whatever the failed call held (a 30 MB image string) do not form a cycle that outlives the request.
                del task, done
        if task.done():
            result = task.exception() or task.result()
            if isinstance(result, Loaded):  # pinned just as the cancel came: give it back
                self._spawn(self.service.registry.unpin(result))  # type: ignore[union-attr]
        else:
            task.add_done_callback(self._discard_late)
        raise _Cancelled

    def _discard_late(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        if task.exception() is None and isinstance(task.result(), Loaded) and self.service.registry is not None:
            self._spawn(self.service.registry.unpin(task.result()))

    def _turns(self, message: p.Generate) -> tuple[ChatTurn, ...]:
        """Protocol messages → chat turns with decoded images (blocking: runs in a thread)."""
        assert self.service.validator is not None
        return self.service.validator.turns(message)

    async def _pin_adapter(
        self, message: p.Generate, adapter: asyncio.Task[AdapterHandle | None] | AdapterHandle | None
    ) -> Loaded | None:
        registry = self.service.registry
        assert registry is not None
        if message.adapter_given:
            return await registry.acquire(message.adapter) if message.adapter is not None else None
        handle = await adapter if isinstance(adapter, asyncio.Task) else adapter
        if handle is None:
            return None
        return await registry.acquire(handle.ref, handle.key)

    async def _run(self, message: p.Generate, gen: Generation, turns: tuple[ChatTurn, ...], entry: Loaded | None,
                   admitted: float, deadline: float) -> p.Done | None:
        """Stream the request through the engine; the ``done`` it ends with (None if it was stopped)."""
        service = self.service
        engine, validator = service.engine, service.validator
        assert engine is not None and validator is not None
        request: EngineRequest = validator.request(
            message, turns, request_id=gen.request_id, adapter=entry.engine_name if entry else None,
            deadline=deadline, received_at=admitted,
        )
        gen.on_stop = lambda: engine.abort(gen.request_id)
        if gen.cancelled.is_set():
            return None
        content: list[str] = []
        finished: Finished | None = None
        async with contextlib.aclosing(engine.generate(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    content.append(event.text)
                    await self.send(p.Token(content=event.text, session_id=gen.session_id), gen.reply_to)
                else:
                    finished = event
        assert finished is not None, "an engine stream always ends with Finished"
        metrics = service.metrics
        metrics.tokens.inc(finished.usage.completion_tokens)
        metrics.prompt_tokens.inc(finished.usage.prompt_tokens)
        t = finished.timings
        if t.first_token_at is not None:
            metrics.ttft.observe(t.first_token_at - admitted)
        if finished.error is not None:
            raise finished.error
        if gen.abort_error is not None:
            return None
        first = t.first_token_at
        decode_s = t.finished_at - first if first is not None else 0.0
        completion = finished.usage.completion_tokens
        assert finished.reason is not None
        return p.Done(
            content="".join(content),
            session_id=gen.session_id,
            finish_reason=finished.reason,
            usage=p.Usage(prompt_tokens=finished.usage.prompt_tokens, completion_tokens=completion,
                          max_tokens=request.sampling.max_tokens),
            timings=p.Timings(
                queue_ms=round(((t.scheduled_at or t.finished_at) - admitted) * 1000, 2),
                ttft_ms=round((first - admitted) * 1000, 2) if first is not None else None,
                total_ms=round((t.finished_at - admitted) * 1000, 2),
                tokens_per_s=round((completion - 1) / decode_s, 2) if completion > 1 and decode_s > 0 else None,
            ),
            adapter=entry.ref if entry else None,
            seed=request.sampling.seed if request.sampling.temperature > 0 else None,
        )


def _peer(ws: ServerConnection) -> str:
    with contextlib.suppress(Exception):
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    return "?"
