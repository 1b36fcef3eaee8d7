"""The worker's shared state: settings, engine, validator, adapters, admission, lifecycle. One per server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapters.factory import open_stores
from adapters.sources import AdapterSources
from adapters.store import AdapterStore
from wire import protocol as p
from wire.errors import CapacityError, ErrorCode, ServiceError

from .config import Settings
from .engines.base import StepStats
from .metrics import Metrics

if TYPE_CHECKING:
    from .adapter_registry import AdapterRegistry, Loaded
    from .engines.base import Engine
    from .validation import GenerateValidator

log = logging.getLogger(__name__)


class AdapterKey(Protocol):
    @property
    def key(self) -> str: ...


class Connection(Protocol):
    """One open connection as the service sees it (``session.Session`` is one; the service never imports it)."""

    @property
    def adapter(self) -> AdapterKey | None:
        """The connection's active adapter, None on the base model."""
        ...

    @property
    def generations(self) -> Mapping[str, object]:
        """Its generations not yet finished, by session id."""
        ...

    def abort_all(self, error: ServiceError) -> None:
        """End every generation of the connection with ``error``."""
        ...


class Admission:
    """Bounded admission: generates in flight (waiting for or holding a batch row) are at most ``max_running`` +
    ``max_queue``; beyond that a new one is told ``busy`` at once. Which of them run is the engine's business.
    ``max_running`` is read from the engine each time: a Ray front's capacity follows its replicas as they come, go
    and autoscale."""

    def __init__(self, max_running: Callable[[], int], max_queue: int, metrics: Metrics,
                 engine_running: Callable[[], int] = lambda: 0) -> None:
        self._max_running = max_running
        self.max_queue = max_queue
        self.metrics = metrics
        self.admitted = 0
        self._engine_running = engine_running

    @property
    def max_running(self) -> int:
        return self._max_running()

    @property
    def running(self) -> int:
        return min(self._engine_running(), self.admitted)

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def admit(self) -> None:
        if self.admitted >= self.max_running + self.max_queue:
            raise CapacityError(
                f"the worker is at capacity ({self.running} running, {self.queued} queued, "
                f"MAX_BATCH_ROWS={self.max_running}, MAX_QUEUE_SIZE={self.max_queue}); retry later"
            )
        self.admitted += 1
        self.metrics.queue_depth.set(self.queued)

    def release(self) -> None:
        self.admitted -= 1
        self.metrics.queue_depth.set(self.queued)


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
        self.sessions: set[Connection] = set()
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

    # ---- startup ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the demo if asked, load the engine (off the event loop), then the default adapter."""
        from .adapter_registry import AdapterRegistry
        from .validation import GenerateValidator

        s = self.settings
        if s.demo:
            from checkpoints.demo import ensure_demo

            paths = await asyncio.to_thread(ensure_demo, s.demo_dir)
            self.model_name = str(paths.model_dir)
            log.warning("DEMO MODE: a tiny model with random weights; everything it writes is meaningless")
        self.store, s3_stores = open_stores(s, s.store_dir)
        log.info("adapter store: %s", self.store.describe())
        self.sources = AdapterSources(self.store, local_roots=s.adapter_local_roots, s3_stores=s3_stores)
        self.engine = engine = await self._load_engine()
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

    async def _load_engine(self) -> Engine:
        """The engine INFERENCE_ENGINE names, with its model loaded off the event loop."""
        if self.settings.engine == "vllm":
            from .engines.vllm import VllmEngine

            return await VllmEngine.start(self.settings, self.model_name)
        if self.settings.engine == "ray":  # the model lives in the replicas of a Ray Serve deployment
            from .ray.engine import RayEngine

            return await RayEngine.connect(self.settings)
        return await self._load_transformers_engine()

    async def _load_transformers_engine(self) -> Engine:
        """The transformers engine, with its model loaded on the engine's own thread."""
        from .engines.transformers import TransformersEngine
        from .engines.transformers.model import LoadedModel, load_model, pick_device

        s = self.settings

        def load() -> LoadedModel:
            device = pick_device(s.device)
            return load_model(self.model_name, device=device, dtype=s.torch_dtype,
                              image_min_pixels=s.image_min_pixels, image_max_pixels=s.image_max_pixels,
                              max_prompt_tokens=s.max_prompt_tokens, cpu_weight_layout=s.weight_layout_for(device))

        def options(lm: LoadedModel) -> dict[str, Any]:
            device = lm.info.device
            return {"max_running": s.batch_rows_for(device), "kv_cache_max_bytes": kv_cache_bound(s, device),
                    "vision_cache_max_bytes": s.vision_cache_max_bytes, "on_step": self._on_step}

        return await asyncio.wrap_future(TransformersEngine.launch(load, options))

    def _on_step(self, stats: StepStats) -> None:
        """Metrics of one engine step (called on the engine's thread; the Prometheus client is thread-safe)."""
        m = self.metrics
        m.step_seconds.labels(stats.kind).observe(stats.seconds)
        if stats.kind == "decode":
            m.batch_rows.observe(stats.rows)
        for gap in stats.inter_token_s:
            m.inter_token.observe(gap)

    # ---- views -----------------------------------------------------------------------------------------------
    @property
    def public_model_name(self) -> str:
        """The model as clients see it: a hub id as is, a local directory by its name only (not the server's path)."""
        if self.settings.demo:
            return "demo"
        local = Path(self.model_name).expanduser()
        return local.name if local.exists() else self.model_name

    @property
    def engine_available(self) -> bool:
        """The engine can take requests (a Ray deployment with no live replica cannot)."""
        return self.engine is not None and self.engine.status().available

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
            "error": self.load_error,
        }

    def render_metrics(self) -> bytes:
        if self.engine is not None:
            status = self.engine.status()
            self.metrics.running.set(status.running)
            self.metrics.engine_waiting.set(status.waiting)
            self.metrics.queue_depth.set(self.admission.queued)
            self.metrics.kv_cache_bytes.set(status.kv_cache_bytes)
        return self.metrics.render()

    def status(self) -> p.Status:
        assert self.engine is not None and self.registry is not None
        info = self.engine.info
        engine = self.engine.status()
        s = self.settings
        users = Counter(session.adapter.key for session in self.sessions if session.adapter is not None)
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

    async def close(self) -> None:
        self.parse_pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            await self.engine.close()


def kv_cache_bound(settings: Settings, device: str) -> int:
    """KV_CACHE_MAX_BYTES, or its default: 2 GiB on CPU and MPS, half the free GPU memory on CUDA."""
    if settings.kv_cache_max_bytes is not None:
        return settings.kv_cache_max_bytes
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return max(free // 2, 64 << 20)
    return 2 << 30
