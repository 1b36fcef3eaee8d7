"""The worker's shared state: settings, engine, adapters, admission, lifecycle. One per server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.factory import open_stores
from adapters.sources import AdapterSources
from adapters.store import AdapterStore

from . import protocol as p
from .config import Settings
from .errors import CapacityError, ErrorCode, ServiceError
from .metrics import Metrics

if TYPE_CHECKING:
    from .engine import Engine
    from .lora import AdapterRegistry, Loaded
    from .session import Session

log = logging.getLogger(__name__)


class Admission:
    """Bounded admission: ``max_running`` generations run, ``max_queue`` wait, the rest are told ``busy``."""

    def __init__(self, max_running: int, max_queue: int, metrics: Metrics) -> None:
        self.max_running = max_running
        self.max_queue = max_queue
        self.metrics = metrics
        self.admitted = 0
        self.running = 0
        self._slots = asyncio.Semaphore(max_running)

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def _gauges(self) -> None:
        self.metrics.queue_depth.set(self.queued)
        self.metrics.running.set(self.running)

    def admit(self) -> None:
        if self.admitted >= self.max_running + self.max_queue:
            raise CapacityError(
                f"the worker is at capacity ({self.running} running, {self.queued} queued, "
                f"MAX_QUEUE_SIZE={self.max_queue}); retry later"
            )
        self.admitted += 1
        self._gauges()

    def release(self) -> None:
        self.admitted -= 1
        self._gauges()

    @contextlib.asynccontextmanager
    async def slot(self, cancelled: asyncio.Event) -> AsyncIterator[bool]:
        """Wait for a run slot; yields False (without a slot) if ``cancelled`` is set first."""
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(cancelled.wait())
        done, _ = await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire not in done:
            acquire.cancel()
            try:
                await acquire
            except asyncio.CancelledError:
                pass
            else:  # acquired in the same step as the cancel: give the slot back
                self._slots.release()
            yield False
            return
        if cancelled.is_set():
            self._slots.release()
            yield False
            return
        self.running += 1
        self._gauges()
        try:
            yield True
        finally:
            self.running -= 1
            self._slots.release()
            self._gauges()


def concurrency_for(device: str) -> int:
    """Default MAX_CONCURRENT_GENERATIONS for a device.

    On a CPU every generation thread gets its own OpenMP team; once two teams exist on few cores, OpenMP stops
    spinning between operations and every later request decodes slower (measured on 2 cores, 116M model: a lone
    request at 0.66× its earlier speed after the first overlap), for no gain in aggregate throughput. So one at a
    time there; on a GPU, threads mostly launch kernels and a few at once raise throughput.
    """
    return 4 if device == "cuda" else 1


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.limits = settings.limits()
        self.image_limits = settings.image_limits()
        # Sized once the device is known (see concurrency_for); no request is admitted before that.
        self.admission = Admission(1, settings.max_queue_size, self.metrics)
        self.generate_pool = ThreadPoolExecutor(1, thread_name_prefix="generate")
        # One thread parses large frames for every connection, in turn: off the event loop, and at most one
        # large frame's parsed copy in memory at a time.
        self.parse_pool = ThreadPoolExecutor(1, thread_name_prefix="parse")
        self.sessions: set[Session] = set()
        self.engine: Engine | None = None
        self.registry: AdapterRegistry | None = None
        self.store: AdapterStore | None = None
        self.sources: AdapterSources | None = None
        self.default_adapter: Loaded | None = None
        self.ready = False
        self.draining = False
        self.model_name = settings.model_name
        self.started_at = time.time()
        self.load_error: str | None = None

    # ---- startup ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the demo if asked, load the model (off the event loop), then the default adapter."""
        from .engine import Engine
        from .lora import AdapterRegistry, LoraRuntime

        s = self.settings
        if s.demo:
            from .demo import ensure_demo

            paths = await asyncio.to_thread(ensure_demo, s.demo_dir)
            self.model_name = str(paths.model_dir)
            log.warning("DEMO MODE: a tiny model with random weights; everything it writes is meaningless")
        self.store, s3_stores = open_stores(s, s.store_dir)
        log.info("adapter store: %s", self.store.describe())
        self.sources = AdapterSources(self.store, local_roots=s.adapter_local_roots, s3_stores=s3_stores)
        self.engine = await asyncio.to_thread(
            Engine.load,
            self.model_name,
            device=s.device,
            dtype=s.torch_dtype,
            image_min_pixels=s.image_min_pixels,
            image_max_pixels=s.image_max_pixels,
            max_prompt_tokens=s.max_prompt_tokens,
        )
        self.metrics.model_load_seconds.set(self.engine.info.load_seconds)
        running = s.max_concurrent_generations or concurrency_for(self.engine.info.device)
        self.admission = Admission(running, s.max_queue_size, self.metrics)
        self.generate_pool.shutdown(wait=False)
        self.generate_pool = ThreadPoolExecutor(running, thread_name_prefix="generate")
        log.info("%d generation(s) run at once, %d more may wait", running, s.max_queue_size)
        if self.engine.info.device == "cuda":
            import torch

            self.metrics.add_cuda_memory(lambda: torch.cuda.current_device())
        runtime = await asyncio.to_thread(LoraRuntime, self.engine.model)
        self.registry = AdapterRegistry(runtime, self.sources, s.max_loaded_adapters, self.metrics)
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


    # ---- views -----------------------------------------------------------------------------------------------
    @property
    def public_model_name(self) -> str:
        """The model as clients see it: a hub id as is, a local directory by its name only (not the server's path)."""
        if self.settings.demo:
            return "demo"
        local = Path(self.model_name).expanduser()
        return local.name if local.exists() else self.model_name

    def health(self) -> dict[str, Any]:
        info = self.engine.info if self.engine else None
        return {
            "status": "ok" if self.ready else ("error" if self.load_error else "loading"),
            "ready": self.ready,
            "draining": self.draining,
            "model": self.public_model_name,
            "device": info.device if info else None,
            "dtype": info.dtype if info else None,
            "model_load_seconds": round(info.load_seconds, 3) if info else None,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "error": self.load_error,
        }

    def status(self) -> p.Status:
        assert self.engine is not None and self.registry is not None
        info = self.engine.info
        s = self.settings
        users = Counter(session.adapter.key for session in self.sessions if session.adapter is not None)
        return p.Status(
            ready=self.ready,
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
            connections=len(self.sessions),
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
                # [low, high] ranges; top_p and repetition_penalty must be greater than 0.
                "temperature": [0.0, 5.0],
                "top_p": [0.0, 1.0],
                "repetition_penalty": [0.0, 10.0],
                "top_k": [0, None],
                "seed": [0, 2**63 - 1],
            },
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
        """Refuse new work, let running generations finish for ``grace_s``, then end the rest with an error."""
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)
        deadline = time.monotonic() + grace_s
        while self._unfinished() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        leftover = self._unfinished()
        if leftover:
            log.warning("shutdown grace period over: ending %d generations with an error", leftover)
            for session in list(self.sessions):
                session.abort_all(
                    CapacityError("the worker is shutting down", code=ErrorCode.SHUTTING_DOWN)
                )
            while self._unfinished():
                await asyncio.sleep(0.02)

    def _unfinished(self) -> int:
        return sum(len(s.generations) for s in self.sessions)

    def close(self) -> None:
        self.generate_pool.shutdown(wait=False, cancel_futures=True)
        self.parse_pool.shutdown(wait=False, cancel_futures=True)
        if self.registry is not None:
            self.registry.close()
