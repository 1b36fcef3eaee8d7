"""The Ray Serve application: ``Replica`` (the model, one per replica) and ``Board`` (what each replica holds).

A replica is the worker's own service without the WebSocket server: :class:`~inference_worker.service.Service`
loads the model with the transformers engine exactly as a worker does, and its adapter registry loads adapters from
the same store and verified cache. Ray Serve's multiplexing decides which adapters a replica keeps: the multiplexed
model id of a request is its adapter's content digest (a re-published adapter is a new id), the loader is
``Replica.adapter`` with ``max_num_models_per_replica`` = the replica's adapter capacity, and Serve routes a request
to a replica that already holds its digest where it can (best effort). Base-model requests go to any replica.

Eviction: Serve drops its least recently used adapter when a replica is full and calls the evicted object's
``__del__``; the adapter leaves the engine then, or when the last request using it ends (a generation pins it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ray import serve

from wire.errors import InternalError, ServiceError, StoreUnavailable

from ..config import Settings
from ..engines.base import AdapterOrigin, Event, Finished
from . import BOARD_DEPLOYMENT, REPLICA_DEPLOYMENT
from .messages import LoadedAdapter, ReplicaDescription, ReplicaJob, ReplicaReport

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from ..adapter_registry import AdapterRegistry, Loaded
    from ..engines.base import Engine

log = logging.getLogger(__name__)


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The settings a replica is built with (everything but the front's own secrets and its default adapter)."""
    values = settings.model_dump(exclude={"auth_token", "default_adapter"})
    return {k: v for k, v in values.items() if v is not None}


class HeldAdapter:
    """What Serve's multiplexing caches per digest; its ``__del__`` (called by Serve on eviction, maybe twice, and
    by the garbage collector) lets the adapter go."""

    def __init__(self, owner: ReplicaBase, entry: Loaded) -> None:
        self.owner = owner
        self.entry = entry
        self.loop = asyncio.get_running_loop()
        self.released = False

    def __del__(self) -> None:
        if self.released:
            return
        self.released = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the replica is gone anyway
            self.loop.call_soon_threadsafe(self.owner.release, self.entry)


class ReplicaBase:
    """One model replica. ``replica_class`` adds the multiplexed loader with the configured capacity."""

    # Ray Serve awaits an async __init__ (the model loads without blocking the replica's event loop).
    async def __init__(self, settings: dict[str, Any], board: DeploymentHandle | None = None) -> None:  # type: ignore[misc]
        import ray

        from ..service import Service

        base = Settings(**settings)
        self.capacity = base.adapters_per_replica
        self.settings = base.model_copy(update={"engine": "transformers", "max_loaded_adapters": self.capacity,
                                                "default_adapter": None})
        self.service = Service(self.settings)
        await self.service.start()
        assert self.service.engine is not None and self.service.registry is not None
        self.engine: Engine = self.service.engine
        self.registry: AdapterRegistry = self.service.registry
        self.board = board
        context = serve.get_replica_context()
        runtime = ray.get_runtime_context()
        self.replica_id = context.replica_id.unique_id
        self.actor_name = runtime.get_actor_name() or ""
        self.node = runtime.get_node_id()[:12]
        self.origins: dict[str, str] = {}  # digest → the ref it was last asked for under
        self.served: Counter[str] = Counter()
        self.sequence = 0
        self.changed = asyncio.Event()
        self.reporter = asyncio.create_task(self._report_forever())
        log.info("replica %s ready: %s, up to %d adapters", self.replica_id, self.service.model_name, self.capacity)

    # ---- what the front calls --------------------------------------------------------------------------------
    def describe(self) -> ReplicaDescription:
        return ReplicaDescription(self.engine.info, self.engine.capabilities, self.engine.status().max_running)

    async def check_adapter(self, origin: AdapterOrigin) -> ServiceError | None:
        """Load an adapter here (its digest is this call's multiplexed id): the front's add_adapter. Returns the
        error a client should see, or None."""
        try:
            entry = await self._acquire(origin)
        except ServiceError as exc:
            return exc
        await self.registry.unpin(entry)
        return None

    async def generate(self, job: ReplicaJob) -> AsyncGenerator[Event, None]:
        """The events of one request; a cancel of the caller's response stops it here (CancelledError)."""
        request = replace(job.request, adapter=None, received_at=time.perf_counter())
        entry: Loaded | None = None
        try:
            if job.adapter is not None:
                try:
                    entry = await self._acquire(job.adapter)
                except ServiceError as exc:
                    yield Finished.failed(exc, request.received_at)
                    return
                request = replace(request, adapter=entry.engine_name)
            self.served[job.adapter.digest if job.adapter else ""] += 1
            async with contextlib.aclosing(self.engine.generate(request)) as events:
                async for event in events:
                    yield event
        finally:
            if entry is not None:
                await self.registry.unpin(entry)
                self.changed.set()

    def report(self) -> ReplicaReport:
        status = self.engine.status()
        self.sequence += 1
        return ReplicaReport(
            replica=self.replica_id, actor=self.actor_name, node=self.node, pid=os.getpid(),
            running=status.running, max_running=status.max_running,
            kv_cache_bytes=status.kv_cache_bytes, kv_cache_max_bytes=status.kv_cache_max_bytes,
            adapters=tuple(sorted((LoadedAdapter(e.name, e.ref, e.digest, e.running)
                                   for e in self.registry.loaded.values()), key=lambda a: a.digest)),
            served=dict(self.served), sequence=self.sequence,
        )

    async def check_health(self) -> None:
        if self.reporter.done():  # it never ends by itself: a failure there is a failure of the replica
            raise InternalError(f"the replica's status reporter stopped: {self.reporter.exception()!r}")

    # ---- adapters ----------------------------------------------------------------------------------------------
    async def adapter(self, digest: str) -> HeldAdapter:  # replaced by the multiplexed loader (replica_class)
        raise NotImplementedError

    async def _acquire(self, origin: AdapterOrigin) -> Loaded:
        """Pin the adapter for one use: through Serve's multiplexing (which may evict another), then the registry
        (which reloads it if it was evicted meanwhile)."""
        self.origins[origin.digest] = origin.ref
        held = await self.adapter(origin.digest)
        entry = await self.registry.acquire(held.entry.ref, held.entry.key)
        if entry.digest != origin.digest:
            await self.registry.unpin(entry)
            raise StoreUnavailable("the adapter changed in the store while it was loading; load it again")
        return entry

    async def _load(self, digest: str) -> HeldAdapter:
        ref = self.origins[digest]
        outcome = await self.registry.load(ref)
        if outcome.entry.digest != digest:
            raise StoreUnavailable("the adapter changed in the store while it was loading; load it again")
        log.info("replica %s: adapter %s (%s) loaded", self.replica_id, ref, digest[:12])
        self.changed.set()
        return HeldAdapter(self, outcome.entry)

    def release(self, entry: Loaded) -> None:
        """Serve evicted the adapter: it leaves the engine now, or when its last running request ends."""
        entry.evict_pending = True
        if not entry.running:
            task = asyncio.ensure_future(self.registry.evict(entry))
            task.add_done_callback(lambda _: self.changed.set())
        log.info("replica %s: adapter %s (%s) evicted", self.replica_id, entry.ref, entry.digest[:12])

    # ---- status ------------------------------------------------------------------------------------------------
    async def _report_forever(self) -> None:
        period = self.settings.ray_status_period_s
        while True:
            if self.board is not None:
                try:
                    await self.board.report.remote(self.report())
                except Exception as exc:  # the board restarts with the application: report again next period
                    log.warning("replica %s could not report its status: %r", self.replica_id, exc)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), period)


def replica_class(capacity: int) -> type[ReplicaBase]:
    """The replica with Serve's multiplexed adapter loader keeping ``capacity`` adapters."""

    class Replica(ReplicaBase):
        @serve.multiplexed(max_num_models_per_replica=capacity)
        async def adapter(self, digest: str) -> HeldAdapter:
            return await self._load(digest)

    return Replica


class Board:
    """The latest report of every replica; reports older than three periods are of a replica that is gone."""

    def __init__(self, period_s: float) -> None:
        self.stale_after_s = 3 * period_s
        self.reports: dict[str, tuple[float, ReplicaReport]] = {}

    def report(self, report: ReplicaReport) -> None:
        previous = self.reports.get(report.replica)
        if previous is None or previous[1].sequence < report.sequence:
            self.reports[report.replica] = (time.monotonic(), report)

    def snapshot(self) -> list[ReplicaReport]:
        now = time.monotonic()
        for replica, (at, _) in list(self.reports.items()):
            if now - at > self.stale_after_s:
                del self.reports[replica]
        return sorted((r for _, r in self.reports.values()), key=lambda r: r.replica)


def build_app(settings: Settings) -> Any:
    """The Serve application of ``settings``: the replicas (ingress) and the board."""
    s = settings
    rows = s.batch_rows_for("cuda" if s.ray_gpus_per_replica > 0 else "cpu")
    options: dict[str, Any] = {
        "name": REPLICA_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": s.ray_cpus_per_replica, "num_gpus": s.ray_gpus_per_replica},
        "max_ongoing_requests": s.ray_max_ongoing_requests or 2 * rows,
        "health_check_period_s": s.ray_health_check_period_s,
        "health_check_timeout_s": max(30.0, 3 * s.ray_health_check_period_s),
        "logging_config": {"enable_access_log": False},  # a line per status report and per request otherwise
    }
    if s.ray_max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": s.ray_min_replicas, "max_replicas": s.ray_max_replicas,
            "target_ongoing_requests": s.ray_target_ongoing_requests or rows,
        }
    else:
        options["num_replicas"] = s.ray_replicas
    board: Any = serve.deployment(Board, name=BOARD_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0},
                             max_ongoing_requests=1000, logging_config={"enable_access_log": False})
    replica: Any = serve.deployment(replica_class(s.adapters_per_replica), **options)
    return replica.bind(replica_settings(s), board.bind(s.ray_status_period_s))


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run`` / ``serve deploy`` config files (``import_path: inference_worker.ray.replica:app_builder``):
    settings from the environment of the node that builds it, overridden by the config's ``args``."""
    return build_app(Settings(**args))  # type: ignore[arg-type]

