"""The worker's one request front, and what every request shares: settings, engine, validator, adapters, admission.

:meth:`Service.generate` is the single path a request takes, whatever protocol it came in by (as vLLM's
``AsyncLLM.generate`` is for its fronts): validate once (``validation.py``) → admit (``admission.py``) → decode its
images and build the engine request (on a thread) → pin its adapter (``adapter_registry.py``) → stream from the
engine → one terminal event → unpin and release. It alone owns the deadline (GENERATION_TIMEOUT_S) and the queueing
counts. A protocol front (``session.py`` for WebSocket) only turns its frames into a ``p.Generate`` and the events
(``events.py``) back into frames; :meth:`Service.abort` stops a request from anywhere on the event loop.

    async for event in service.generate(message, request_id=rid, adapter=connection_adapter):
        match event:
            case Accepted(): ...                  # at once, or instead:
            case Failed(error=error): ...         # refused, or failed after it was accepted (the end)
            case TextDelta(text=text): ...
            case Completed(): ...                 # the end: stop, length or cancelled

One per server (and one per Ray replica, which uses its startup and adapter registry only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from adapters.factory import open_stores
from adapters.sources import AdapterSources
from adapters.store import AdapterStore
from wire import protocol as p
from wire.errors import DeadlineExceeded, InternalError, NotReady, ServiceError, ShuttingDown

from .adapter_registry import AdapterRegistry, Loaded
from .admission import Admission
from .config import Settings
from .engines.base import EngineRequest, Finished, TextDelta
from .events import Accepted, AdapterHandle, Completed, Failed, FrontEvent
from .metrics import Metrics
from .startup import load_engine
from .validation import CheckedRequest, GenerateValidator

if TYPE_CHECKING:
    from .engines.base import Engine

log = logging.getLogger(__name__)
T = TypeVar("T")
ConnectionAdapter = AdapterHandle | asyncio.Future[AdapterHandle | None] | None


class Connection(Protocol):
    """An open connection as the service counts it (``connection.ConnectionState`` is one)."""

    @property
    def adapter(self) -> AdapterHandle | None:
        """The connection's active adapter, None on the base model."""
        ...


class _Stopped(Exception):
    """The request was stopped (cancel, deadline, shutdown) while it waited for something."""


class _Flight:
    """One admitted request until its end: how it is stopped, and why."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.error: ServiceError | None = None  # when set, the request ends with this error
        self.engine_abort: Callable[[], None] | None = None  # set while the engine runs it
        self.settled = False  # its end is decided: nothing stops it any more

    def stop(self, error: ServiceError | None = None) -> None:
        if self.settled:
            return
        if error is not None and self.error is None and not self.stopped.is_set():
            self.error = error
        self.stopped.set()
        if self.engine_abort is not None:
            self.engine_abort()

    def settle(self) -> None:
        self.settled = True
        self.engine_abort = None


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.request_limits = settings.request_limits()
        self.parse_limits = settings.parse_limits()
        self.image_limits = settings.image_limits()
        # Sized once the engine is up; no request is admitted before that.
        self.admission = Admission(lambda: 1, settings.max_queue_size, self.metrics)
        # One thread parses large frames for every connection, in turn: off the event loop, and at most one
        # large frame's parsed copy in memory at a time.
        self.parse_pool = ThreadPoolExecutor(1, thread_name_prefix="parse")
        self.connections: set[Connection] = set()
        self.engine: Engine | None = None
        self.validator: GenerateValidator | None = None
        self.registry: AdapterRegistry | None = None
        self.store: AdapterStore | None = None
        self.sources: AdapterSources | None = None
        self.default_adapter: Loaded | None = None
        self.ready = False
        self.draining = False
        self.model_name = settings.model_name
        self.started_at = time.time()
        self.load_error: str | None = None
        self._flights: dict[str, _Flight] = {}  # admitted requests by request id, until their end
        self.completed = 0  # requests that ended with stop or length, and their seconds in all (/stats)
        self.completed_seconds = 0.0
        self._background: set[asyncio.Task[Any]] = set()

    # ---- startup ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the demo if asked, load the engine (off the event loop), then the default adapter."""
        s = self.settings
        if s.demo:
            from checkpoints.demo import ensure_demo

            paths = await asyncio.to_thread(ensure_demo, s.demo_dir)
            self.model_name = str(paths.model_dir)
            log.warning("DEMO MODE: a tiny model with random weights; everything it writes is meaningless")
        self.store, s3_stores = open_stores(s, s.store_dir)
        log.info("adapter store: %s", self.store.describe())
        self.sources = AdapterSources(self.store, local_roots=s.adapter_local_roots, s3_stores=s3_stores)
        self.engine = engine = await load_engine(s, self.model_name, self.metrics)
        self.metrics.model_load_seconds.set(engine.info.load_seconds)
        status = engine.status()
        self.admission = Admission(lambda: engine.status().max_running, s.max_queue_size, self.metrics,
                                   lambda: engine.status().running)
        self.metrics.kv_cache_max_bytes.set(status.kv_cache_max_bytes)
        log.info("%s engine: up to %d requests in the batch, %d more may wait; KV cache bound %.0f MiB",
                 s.engine, status.max_running, s.max_queue_size, status.kv_cache_max_bytes / 2**20)
        if s.engine == "ray":
            self.metrics.add_replicas(lambda: engine.status().details.get("replicas", []))
        elif engine.info.device == "cuda" and s.engine == "transformers":  # vLLM's memory is in its own process
            import torch

            self.metrics.add_cuda_memory(lambda: torch.cuda.current_device())
        self.validator = GenerateValidator(self.request_limits, engine.capabilities, self.image_limits,
                                           self.public_model_name)
        self.registry = AdapterRegistry(engine, self.sources, s.max_loaded_adapters, self.metrics)
        if s.default_adapter:
            try:
                outcome = await self.registry.load(s.default_adapter)
                outcome.entry.default = True
                self.default_adapter = outcome.entry
                log.info("default adapter %s active on new connections", s.default_adapter)
            except ServiceError as exc:
                log.warning("INFERENCE_DEFAULT_ADAPTER=%s could not be loaded (%s); serving the base model",
                            s.default_adapter, exc)
        self.ready = True
        self.metrics.ready.set(1)

    # ---- the request front -----------------------------------------------------------------------------------
    async def generate(self, message: p.Generate, *, request_id: str | None = None, adapter: ConnectionAdapter = None,
                       timeout: tuple[float, str] | None = None) -> AsyncGenerator[FrontEvent, None]:
        """Run one request: ``Failed`` if it is refused, else ``Accepted``, text pieces and exactly one end
        (``Completed`` or ``Failed``). Everything up to the first event runs without awaiting anything.

        ``adapter`` is the caller's adapter for a request that names none (``message.adapter`` wins when given): a
        WebSocket connection's, or a future of it while a ``load_adapter`` sent before is still loading. Closing
        the stream early stops the request (nothing more is yielded). ``timeout``: (seconds left, the limit as the
        error names it), a deadline shorter than GENERATION_TIMEOUT_S (the HTTP ``/infer``'s INFER_TIMEOUT_S)."""
        request_id = request_id or uuid.uuid4().hex
        try:
            checked = self._admit(message, request_id)
        except ServiceError as exc:
            self.count_refused(exc)
            yield Failed(_detached(exc))
            return
        received = time.perf_counter()
        flight = self._flights[request_id] = _Flight()
        seconds = self.settings.generation_timeout_s
        limit = f"GENERATION_TIMEOUT_S={seconds:g}s"
        if timeout is not None and timeout[0] < seconds:
            seconds, limit = timeout
        timer = asyncio.get_running_loop().call_later(max(seconds, 0.0), flight.stop, DeadlineExceeded(
            f"generation did not finish within {limit}"))
        entry: Loaded | None = None
        end: Completed | Failed | None = None
        try:
            yield Accepted(request_id, checked.sampling.max_tokens)
            turns = await self._unless_stopped(flight, lambda: asyncio.to_thread(checked.turns))
            entry = await self._unless_stopped(flight, lambda: self._pin(message, adapter))
            engine = self.engine
            assert engine is not None
            request = EngineRequest(request_id=request_id, turns=turns, sampling=checked.sampling,
                                    adapter=entry.engine_name if entry else None, received_at=received)
            flight.engine_abort = lambda: engine.abort(request_id)
            if flight.stopped.is_set():
                raise _Stopped
            pieces: list[str] = []
            finished: Finished | None = None
            async with contextlib.aclosing(engine.generate(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        pieces.append(event.text)
                        yield event
                    else:
                        finished = event
            assert finished is not None, "an engine stream always ends with Finished"
            self._count(finished, received)
            if finished.error is not None:
                raise finished.error
            if flight.error is None:
                end = _completed(checked, finished, "".join(pieces), entry, received)
                self.completed += 1
                self.completed_seconds += end.timings.total_ms / 1000
        except _Stopped:
            pass
        except ServiceError as exc:
            end = Failed(_detached(exc))
        except Exception as exc:  # a bug: still exactly one end
            log.exception("request %s failed", request_id)
            end = Failed(InternalError(f"{type(exc).__name__}: {exc}"))
        except BaseException:  # the consumer closed the stream (or was cancelled): nobody to tell the end
            self.metrics.requests.labels("cancelled").inc()
            raise
        finally:
            timer.cancel()
            flight.settle()  # its end is decided (nothing was awaited since): a deadline or a drain changes nothing
            try:
                if entry is not None and self.registry is not None:
                    try:
                        await self.registry.unpin(entry)
                    except Exception:  # an eviction that failed must not cost this request its end
                        log.exception("releasing adapter %s after %s failed", entry.ref, request_id)
            finally:  # even if the consumer is cancelled while the adapter is given back
                self.admission.release()
                del self._flights[request_id]  # after the last await: a drain that sees no flight sees every end
        if flight.error is not None:
            end = Failed(flight.error)
        elif end is None:
            end = _cancelled(checked, entry, received)
        self.metrics.requests.labels(str(end.error.code if isinstance(end, Failed) else end.finish_reason)).inc()
        yield end

    def abort(self, request_id: str, error: ServiceError | None = None) -> bool:
        """Stop an admitted request: it ends with ``error``, or as cancelled. False if it is not running."""
        flight = self._flights.get(request_id)
        if flight is None:
            return False
        flight.stop(error)
        return True

    def count_refused(self, error: ServiceError) -> None:
        """Count a generate refused before it reached :meth:`generate` (unparseable, or refused by its connection)."""
        self.metrics.requests.labels(str(error.code)).inc()

    def _admit(self, message: p.Generate, request_id: str) -> CheckedRequest:
        if self.draining:
            raise ShuttingDown("the worker is shutting down")
        if not self.ready or self.validator is None:
            raise NotReady("the model is still loading; retry later")
        if request_id in self._flights:
            raise InternalError(f"request id {request_id!r} is already running")
        checked = self.validator.validate(message)
        self.admission.admit()
        return checked

    async def _unless_stopped(self, flight: _Flight, start: Callable[[], Awaitable[T]]) -> T:
        """Await what ``start()`` starts unless the request is stopped first (then it finishes in the background,
        and an adapter it pinned meanwhile is given back)."""
        if flight.stopped.is_set():
            raise _Stopped
        task = asyncio.ensure_future(start())
        stop = asyncio.ensure_future(flight.stopped.wait())
        try:
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the consumer was cancelled meanwhile: the call finishes in the background
            task.add_done_callback(self._discard_late)
            raise
        finally:
            stop.cancel()
        if task in done and not flight.stopped.is_set():
            try:
                return task.result()
            finally:
                # An exception's traceback holds this frame: drop the task so that the exception, the task and
                # whatever the failed call held (a 30 MB image string) do not form a cycle that outlives the request.
                del task, done
        if task.done():
            self._discard_late(task)
        else:
            task.add_done_callback(self._discard_late)
        raise _Stopped

    def _discard_late(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if isinstance(result, Loaded) and self.registry is not None:  # pinned just as the request was stopped
            unpin = asyncio.ensure_future(self.registry.unpin(result))
            self._background.add(unpin)
            unpin.add_done_callback(self._background.discard)

    async def _pin(self, message: p.Generate, adapter: ConnectionAdapter) -> Loaded | None:
        registry = self.registry
        assert registry is not None
        if message.adapter_given:
            return await registry.acquire(message.adapter) if message.adapter is not None else None
        handle = adapter if adapter is None or isinstance(adapter, AdapterHandle) else await asyncio.shield(adapter)
        if handle is None:
            return None
        return await registry.acquire(handle.ref, handle.key)

    def _count(self, finished: Finished, received: float) -> None:
        metrics = self.metrics
        metrics.tokens.inc(finished.usage.completion_tokens)
        metrics.prompt_tokens.inc(finished.usage.prompt_tokens)
        if finished.timings.first_token_at is not None:
            metrics.ttft.observe(finished.timings.first_token_at - received)

    # ---- views -----------------------------------------------------------------------------------------------
    @property
    def public_model_name(self) -> str:
        """The model as clients see it: a hub id as is, a local directory by its name only (not the server's path)."""
        if self.settings.demo:
            return "demo"
        name = self.model_name
        local = Path(name).expanduser()
        # a directory (even one that does not exist: a failed load names it too) by its last part only
        if local.exists() or name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
            return local.name
        return name

    @property
    def engine_available(self) -> bool:
        """The engine can take requests (a Ray deployment with no live replica cannot)."""
        return self.engine is not None and self.engine.status().available

    @property
    def serving(self) -> bool:
        """Ready for requests (``/ready`` is 200): the model loaded, not draining, the engine available."""
        return self.ready and not self.draining and self.engine_available

    def health(self) -> dict[str, Any]:
        info = self.engine.info if self.engine else None
        return {
            "status": "ok" if self.ready else ("error" if self.load_error else "loading"),
            "ready": self.ready and self.engine_available,
            "draining": self.draining,
            "model": self.public_model_name,
            "device": info.device if info else None,
            "dtype": info.dtype if info else None,
            "model_load_seconds": round(info.load_seconds, 3) if info else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            # the exception's type only: its text may hold the server's paths (the log has all of it)
            "error": self.load_error.split(":", 1)[0] + ": the model could not be loaded (see the worker's log)"
            if self.load_error else None,
        }

    def render_metrics(self) -> bytes:
        if self.engine is not None:
            status = self.engine.status()
            self.metrics.running.set(status.running)
            self.metrics.queue_depth.set(self.admission.queued)
            self.metrics.kv_cache_bytes.set(status.kv_cache_bytes)
        return self.metrics.render()

    def status(self) -> p.Status:
        assert self.engine is not None and self.registry is not None
        info = self.engine.info
        engine = self.engine.status()
        s = self.settings
        users = Counter(c.adapter.key for c in self.connections if c.adapter is not None)
        return p.Status(
            ready=self.ready and self.engine_available,
            model=self.public_model_name,
            model_type=info.model_type,
            device=info.device,
            dtype=info.dtype,
            vision=info.vision,
            loaded_adapters=[
                p.AdapterUse(
                    name=e.name, adapter_path=e.ref, digest=e.digest, rank=e.rank, target_modules=e.target_modules,
                    connections=users[e.key], running=e.running, default=e.default,
                )
                for e in sorted(self.registry.loaded.values(), key=lambda e: e.ref)
            ],
            max_loaded_adapters=s.max_loaded_adapters,
            running=self.admission.running,
            queued=self.admission.queued,
            max_running=self.admission.max_running,
            max_queue=s.max_queue_size,
            connections=len(self.connections),
            limits={
                "max_new_tokens": s.max_new_tokens,
                "default_max_tokens": s.default_max_tokens,
                "max_prompt_tokens": s.max_prompt_tokens,
                "max_message_bytes": s.max_message_bytes,
                "max_images_per_request": s.max_images_per_request,
                "image_max_bytes": s.image_max_bytes,
                "image_max_source_pixels": s.image_max_source_pixels,
                "image_min_pixels": s.image_min_pixels,
                "image_max_pixels": s.image_max_pixels,
                "max_stop_strings": s.max_stop_strings,
                "max_stop_length": s.max_stop_length,
                "max_sessions_per_connection": s.max_sessions_per_connection,
                "generation_timeout_s": s.generation_timeout_s,
                **self.request_limits.sampling_ranges(),
            },
            engine=s.engine,
            kv_cache_bytes=engine.kv_cache_bytes,
            kv_cache_max_bytes=engine.kv_cache_max_bytes,
            engine_details=engine.details,
        )

    async def list_adapters(self) -> p.Adapters:
        assert self.store is not None and self.registry is not None
        manifests = await asyncio.to_thread(self.store.list)
        loaded_keys = {(e.name, e.digest) for e in self.registry.loaded.values()}
        return p.Adapters(
            items=[
                p.AdapterItem(
                    name=m.name, loaded=(m.name, m.digest) in loaded_keys, digest=m.digest, size=m.size, rank=m.rank,
                    alpha=m.alpha, target_modules=m.target_modules, base_model=m.base_model,
                    peft_version=m.peft_version, created=m.created,
                )
                for m in manifests
            ]
        )

    # ---- shutdown --------------------------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Refuse new work, let running requests finish for ``grace_s``, then end the rest with ``shutting_down``."""
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        deadline = time.monotonic() + grace_s
        while self._flights and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._flights:
            log.warning("shutdown grace period over: ending %d generations with an error", len(self._flights))
            for flight in list(self._flights.values()):
                flight.stop(ShuttingDown("the worker is shutting down"))
            while self._flights:
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.parse_pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            await self.engine.close()


def _detached(error: ServiceError) -> ServiceError:
    """The error without its traceback and chained exceptions: they hold the frames that raised it, and with them the
    request (a 30 MB image string) in a reference cycle that only the cyclic garbage collector would free; a client
    sending refused large images would pile them up between two collections."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


def _completed(checked: CheckedRequest, finished: Finished, content: str, entry: Loaded | None,
               received: float) -> Completed:
    t = finished.timings
    first = t.first_token_at
    decode_s = t.finished_at - first if first is not None else 0.0
    completion = finished.usage.completion_tokens
    sampling = checked.sampling
    assert finished.reason is not None
    return Completed(
        content=content,
        finish_reason=finished.reason,
        usage=p.Usage(prompt_tokens=finished.usage.prompt_tokens, completion_tokens=completion,
                      max_tokens=sampling.max_tokens),
        timings=p.Timings(
            queue_ms=round(((t.scheduled_at or t.finished_at) - received) * 1000, 2),
            ttft_ms=round((first - received) * 1000, 2) if first is not None else None,
            total_ms=round((t.finished_at - received) * 1000, 2),
            tokens_per_s=round((completion - 1) / decode_s, 2) if completion > 1 and decode_s > 0 else None,
        ),
        adapter=entry.ref if entry else None,
        seed=sampling.seed if sampling.temperature > 0 else None,
    )


def _cancelled(checked: CheckedRequest, entry: Loaded | None, received: float) -> Completed:
    """The end of a request cancelled before it produced anything."""
    total = round((time.perf_counter() - received) * 1000, 2)
    return Completed(
        content="", finish_reason="cancelled",
        usage=p.Usage(prompt_tokens=0, completion_tokens=0, max_tokens=checked.sampling.max_tokens),
        timings=p.Timings(queue_ms=total, ttft_ms=None, total_ms=total, tokens_per_s=None),
        adapter=entry.ref if entry else None, seed=None,
    )
