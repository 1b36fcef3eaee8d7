"""Which adapters are loaded: one load per content at a time, LRU eviction that never evicts an adapter in use.

Engine-independent and event-loop side: it resolves an ``adapter_path`` through the adapter sources (store names,
``s3://`` references, allowed local paths), fetches and verifies the files, and asks the engine to add or remove the
adapter (``Engine.add_adapter`` / ``Engine.remove_adapter``), which checks it against the model. A generation pins
its adapter (:meth:`AdapterRegistry.acquire` / :meth:`AdapterRegistry.unpin`) so it is never evicted under it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.sources import AdapterSources, Identity, Materialized
from wire.errors import ServiceError, StoreUnavailable

from .engines.base import AdapterOrigin, Engine
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    engine_name: str  # the name the engine knows it by
    ref: str  # what the client asked for (store name, s3:// URL or path)
    key: str  # identity of the content: same key ⇒ same weights
    name: str
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    load_ms: float
    default: bool = False  # INFERENCE_DEFAULT_ADAPTER: never evicted
    evict_pending: bool = False  # chosen for eviction while in use: evicted when its last generation ends
    running: int = 0
    last_used: float = field(default_factory=time.monotonic)


Progress = Callable[[str, int, int | None], None]


@dataclass
class LoadOutcome:
    entry: Loaded
    cached: bool  # True when no bytes were transferred (already loaded, or in the local cache)
    stale: bool = False  # True when the store was unreachable and the loaded copy was used


class AdapterRegistry:
    """Loaded adapters: one load per content key at a time, LRU eviction that skips adapters in use."""

    def __init__(self, engine: Engine, sources: AdapterSources, max_loaded: int,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.sources = sources
        self.max_loaded = max_loaded
        self.metrics = metrics
        self.loaded: dict[str, Loaded] = {}  # by key
        self._inflight: dict[str, asyncio.Future[LoadOutcome]] = {}
        self._counter = itertools.count(1)

    def _stage(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        if self.metrics is not None:
            self.metrics.adapter_load_seconds.labels(stage).observe(now - started)
        return now

    def _record_transfer(self, material: Materialized) -> None:
        transfer = material.transfer
        if self.metrics is None or transfer is None:
            return
        self.metrics.adapter_download_bytes.inc(transfer.bytes)
        self.metrics.adapter_load_seconds.labels("download").observe(transfer.download_s)
        self.metrics.adapter_load_seconds.labels("verify").observe(transfer.verify_s)

    def _outcome(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.adapter_loads.labels(outcome).inc()
            self.metrics.loaded_adapters.set(len(self.loaded))

    async def load(self, ref: str, progress: Progress | None = None) -> LoadOutcome:
        """Make the adapter ``ref`` loaded, loading it if needed."""
        started = time.perf_counter()
        try:
            outcome = await self._load(ref, progress, started)
        except ServiceError as exc:
            self._outcome(str(exc.code))
            raise
        self._outcome("cached" if outcome.cached else "loaded")
        return outcome

    async def _load(self, ref: str, progress: Progress | None, started: float) -> LoadOutcome:
        try:
            identity: Identity = await asyncio.to_thread(self.sources.identify, ref)
        except StoreUnavailable:
            stale = self._loaded_by_ref(ref)
            if stale is None:
                raise
            log.warning("adapter store unreachable; %s served from memory (digest %s)", ref, stale.digest[:12])
            self._touch(stale)
            return LoadOutcome(stale, cached=True, stale=True)
        self._stage("resolve", started)
        existing = self.loaded.get(identity.key)
        if existing is not None:
            self._touch(existing)
            await self._evict_over_capacity(protect=existing)
            return LoadOutcome(existing, cached=True)
        inflight = self._inflight.get(identity.key)
        if inflight is not None:
            shared = await asyncio.shield(inflight)
            return LoadOutcome(shared.entry, cached=True)
        future: asyncio.Future[LoadOutcome] = asyncio.get_running_loop().create_future()
        self._inflight[identity.key] = future
        try:
            outcome = await self._load_new(ref, identity, progress, started)
            future.set_result(outcome)
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; every waiter re-raises it
            raise
        finally:
            del self._inflight[identity.key]

    def _loaded_by_ref(self, ref: str) -> Loaded | None:
        matches = [e for e in self.loaded.values() if e.ref == ref]
        return max(matches, key=lambda e: e.last_used) if matches else None

    async def _load_new(self, ref: str, identity: Identity, progress: Progress | None, started: float) -> LoadOutcome:
        # MAX_LOADED_ADAPTERS is exceeded only while adapters are pinned by running generations: the least recently
        # used idle ones are evicted right after this load, and pinned ones as soon as their generation ends.
        t = time.perf_counter()
        material = await asyncio.to_thread(self.sources.materialize, identity, progress)
        try:
            t = self._stage("fetch", t)
            self._record_transfer(material)
            identity = material.identity
            if progress is not None:
                progress("loading", 0, None)
            engine_name = f"lora{next(self._counter)}"
            await self.engine.add_adapter(engine_name, material.facts,
                                          AdapterOrigin(ref=ref, digest=identity.digest))
        finally:
            material.release()
        self._stage("inject", t)
        facts = material.facts
        entry = Loaded(
            engine_name=engine_name, ref=ref, key=identity.key, name=identity.name, digest=identity.digest,
            rank=facts.rank, alpha=facts.alpha, target_modules=facts.target_modules,
            load_ms=(time.perf_counter() - started) * 1000,
        )
        self.loaded[identity.key] = entry
        log.info("adapter %s loaded as %s (digest %s, %.0f ms%s)", ref, engine_name, identity.digest[:12],
                 entry.load_ms, f", {material.transfer.bytes} bytes downloaded" if material.transfer else "")
        await self._evict_over_capacity(protect=entry)
        return LoadOutcome(entry, cached=material.cached)

    @staticmethod
    def _touch(entry: Loaded) -> None:
        entry.last_used = time.monotonic()
        entry.evict_pending = False

    async def _evict_over_capacity(self, protect: Loaded | None = None) -> None:
        """Evict least-recently-used adapters down to MAX_LOADED_ADAPTERS.

        A victim that a running generation uses is only marked: it is evicted when that generation ends.
        """
        while True:
            kept = [e for e in self.loaded.values() if not e.evict_pending]
            if len(kept) <= self.max_loaded:
                return
            candidates = sorted((e for e in kept if e is not protect and not e.default), key=lambda e: e.last_used)
            if not candidates:
                return
            victim = candidates[0]
            if victim.running:
                victim.evict_pending = True
                log.info("adapter %s will be evicted when its running generations end", victim.ref)
            else:
                await self.evict(victim)

    async def evict(self, entry: Loaded) -> None:
        if self.loaded.get(entry.key) is not entry or entry.running:
            return
        del self.loaded[entry.key]
        await self.engine.remove_adapter(entry.engine_name)
        if self.metrics is not None:
            self.metrics.loaded_adapters.set(len(self.loaded))
        log.info("adapter %s (%s) evicted", entry.ref, entry.engine_name)

    async def acquire(self, ref: str, key: str | None = None) -> Loaded:
        """Pin an adapter for a generation (call :meth:`unpin` when it ends), reloading it if it was evicted."""
        while True:
            entry = self.loaded.get(key) if key is not None else None
            if entry is None:
                entry = (await self.load(ref)).entry
            if self.loaded.get(entry.key) is entry:  # not evicted while this coroutine waited
                self.pin(entry)
                try:
                    await self._evict_over_capacity(protect=entry)
                except BaseException:  # the caller gets no entry to unpin: give the pin back now
                    entry.running -= 1
                    raise
                return entry
            key = None

    def pin(self, entry: Loaded) -> None:
        entry.running += 1
        self._touch(entry)

    async def unpin(self, entry: Loaded) -> None:
        entry.running -= 1
        if entry.running == 0 and entry.evict_pending:
            await self.evict(entry)

    def get(self, key: str) -> Loaded | None:
        return self.loaded.get(key)
