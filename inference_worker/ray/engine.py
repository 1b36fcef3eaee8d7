"""The engine of a front (``INFERENCE_ENGINE=ray``): the protocol's requests go to a Ray Serve deployment.

The front holds no model. :meth:`RayEngine.add_adapter` has the adapter loaded on a replica (which checks it against
the model, so a bad adapter is refused before any request uses it) and remembers its name → (ref, digest);
:meth:`RayEngine.generate` streams from the deployment through a ``DeploymentHandle`` with
``multiplexed_model_id=<digest>`` (Ray Serve prefers a replica that holds it) and ``stream=True``; a task of the
request's own relays the replica's events to its stream. Ending a request early — an abort (a cancel, or the deadline
of the front's request), a disconnect — calls ``cancel()`` on the response: the only thing that stops the replica's
generator (breaking out of the stream does not). A replica that dies mid-stream ends its requests with the
retryable ``replica_failed``; Serve sends new requests to the surviving replicas while it starts a replacement.

Status, ``/metrics`` and readiness come from the application's board (``replica.Board``), read every
``RAY_STATUS_PERIOD_S``: the front is available while at least one replica reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, RequestCancelledError

from wire.errors import CapacityError, InternalError, ReplicaFailed, ServiceError

from ..config import Settings
from ..engines.base import (
    AdapterInfo,
    AdapterOrigin,
    EngineRequest,
    EngineStatus,
    Event,
    Finished,
    TextDelta,
    Timings,
    Usage,
)
from ..engines.streams import Outbox, RequestStreams
from . import BOARD_DEPLOYMENT
from .messages import ReplicaDescription, ReplicaJob, ReplicaReport

log = logging.getLogger(__name__)

_REPLICA_LOST = (RayActorError, ActorUnavailableError)


def connect_ray(settings: Settings) -> bool:
    """Join the cluster (blocking). False when this process already had Ray initialised (e.g. the test driver)."""
    if ray.is_initialized():
        return False
    if settings.ray_address == "local":
        # A front with a cluster of its own would have no replicas and wait for them forever.
        raise RuntimeError("RAY_ADDRESS=local starts an empty cluster: a front (INFERENCE_ENGINE=ray) joins the "
                           "cluster that python -m inference_worker.ray deployed to (its logged address, or auto)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the launcher: an old token file must not turn auth on
    ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    return True


@dataclass
class _Remote:
    """One request on its way through the deployment."""

    response: Any  # the DeploymentResponseGenerator
    task: asyncio.Task[None] | None = None  # relays the replica's events to the request's stream
    cancelled: bool = False


class RayEngine:
    def __init__(self, settings: Settings, handle: Any, board: Any, description: ReplicaDescription,
                 owns_ray: bool) -> None:
        self.settings = settings
        self.handle = handle
        self.board = board
        self.info = description.info
        self.capabilities = description.capabilities
        self.rows_per_replica = description.max_running
        self.owns_ray = owns_ray
        self.replicas: list[ReplicaReport] = []
        self.board_error: str | None = None
        self._adapters: dict[str, AdapterOrigin] = {}
        self._streams: RequestStreams[_Remote] = RequestStreams(abort=_cancel)
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, settings: Settings) -> RayEngine:
        """Join the cluster, wait for the application to exist and a replica to answer (readiness follows the
        deployment's), then watch its replicas."""
        owns_ray = await asyncio.to_thread(connect_ray, settings)
        app = settings.ray_app_name
        waited = 0.0
        while True:
            try:
                handle = await asyncio.to_thread(serve.get_app_handle, app)
                board = await asyncio.to_thread(serve.get_deployment_handle, BOARD_DEPLOYMENT, app)
                break
            except Exception as exc:  # RayServeException (no such application) or a controller not yet up
                if waited % 10 == 0:
                    log.info("waiting for the Ray Serve application %r (%s)", app, exc)
                await asyncio.sleep(1.0)
                waited += 1
        description: ReplicaDescription = await handle.describe.remote()
        engine = cls(settings, handle, board, description, owns_ray)
        await engine.refresh()
        engine._watcher = asyncio.create_task(engine._watch())
        log.info("Ray Serve application %r: %d replicas of %s, %d rows each", app, len(engine.replicas),
                 description.info.name, description.max_running)
        return engine

    # ---- requests --------------------------------------------------------------------------------------------
    def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        return self._streams.stream(request, start=lambda outbox: self._send(request, outbox))

    def _send(self, request: EngineRequest, outbox: Outbox) -> _Remote:
        origin = None
        if request.adapter is not None:
            origin = self._adapters.get(request.adapter)
            if origin is None:
                raise InternalError(f"adapter {request.adapter} is not known to the engine")
        job = ReplicaJob(request=replace(request, adapter=None), adapter=origin)
        handle = self.handle.options(stream=True, multiplexed_model_id=origin.digest if origin else "")
        remote = _Remote(handle.generate.remote(job))
        remote.task = asyncio.get_running_loop().create_task(self._relay(request, remote, outbox))
        return remote

    async def _relay(self, request: EngineRequest, remote: _Remote, outbox: Outbox) -> None:
        """The replica's events into the request's stream, ending with exactly one Finished whatever happens."""
        first_token_at: float | None = None
        deltas = 0
        try:
            async for event in remote.response:
                if isinstance(event, TextDelta):
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    deltas += 1
                    outbox.put(event)
                    continue
                outbox.put(_localized(request, event, first_token_at))
                return
            error: ServiceError = InternalError("the replica's stream ended without a result")
        except asyncio.CancelledError:  # the relay itself (the event loop is closing): the replica stops too
            remote.response.cancel()
            outbox.put(_cancelled(request, deltas, first_token_at))
            raise
        except RequestCancelledError as exc:
            if remote.cancelled:
                outbox.put(_cancelled(request, deltas, first_token_at))
                return
            error = InternalError("the deployment cancelled the request", detail=repr(exc)[:500])
        except _REPLICA_LOST as exc:
            error = ReplicaFailed("the model replica serving this request failed; retry", detail=repr(exc)[:500])
        except BackPressureError as exc:
            error = CapacityError("every model replica is at capacity; retry later", detail=repr(exc)[:500])
        except Exception as exc:
            log.exception("request %s: the Ray deployment failed", request.request_id)
            error = InternalError("the model deployment failed", detail=repr(exc)[:500])
        outbox.put(Finished.failed(error, request.received_at, first_token_at))

    def abort(self, request_id: str) -> None:
        self._streams.abort(request_id)

    # ---- adapters --------------------------------------------------------------------------------------------
    async def add_adapter(self, name: str, facts: Any, origin: AdapterOrigin | None = None) -> AdapterInfo:
        if origin is None:
            raise InternalError("the Ray engine needs the adapter's origin to load it on its replicas")
        error = await self.handle.options(multiplexed_model_id=origin.digest).check_adapter.remote(origin)
        if error is not None:
            raise error
        await self._until_routable(origin.digest)
        self._adapters[name] = origin
        modules = facts.modules
        return AdapterInfo(name=name, rank=facts.rank, modules=len(modules),
                           vision=any("visual" in m.split(".") for m in modules),
                           parameter_bytes=facts.tensor_bytes)

    async def _until_routable(self, digest: str, timeout_s: float = 10.0) -> None:
        """Wait until this front's router knows which replica holds ``digest``. Replicas announce their adapters to
        the Serve controller, which passes them on to the routers (0.1 s on a quiet cluster, seconds on a busy one):
        until then a request for it, and a load of the next new adapter, go to the replicas with the fewest adapters
        *as the router last heard*, so the adapter would load on a second replica, or every new adapter on the same
        one. Past ``timeout_s`` the load still succeeds; affinity is then best effort (logged)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:  # Ray Serve 2.60's router (pinned); without it, a pause as long as two announcements
                table = self.handle._router._asyncio_router.request_router._multiplexed_model_id_to_replica_ids
            except AttributeError:
                await asyncio.sleep(0.3)
                return
            if table.get(digest):
                return
            await asyncio.sleep(0.02)
        log.warning("adapter %s: this front's router did not learn its replica within %.0f s; the next requests "
                    "for it may load it on another replica", digest[:16], timeout_s)

    async def remove_adapter(self, name: str) -> None:
        # Replicas keep their own LRU of digests (Serve's multiplexing): nothing to unload remotely.
        self._adapters.pop(name, None)

    # ---- status and lifecycle --------------------------------------------------------------------------------
    async def refresh(self) -> None:
        try:
            self.replicas = await asyncio.wait_for(self.board.snapshot.remote(),
                                                   timeout=5 * self.settings.ray_status_period_s)
            self.board_error = None
        except Exception as exc:  # the application is gone or restarting: no replica can be counted on
            self.replicas = []
            self.board_error = repr(exc)[:300]

    async def _watch(self) -> None:
        was = True
        while True:
            await asyncio.sleep(self.settings.ray_status_period_s)
            await self.refresh()
            now = bool(self.replicas)
            if now != was:
                log.warning("Ray Serve application %r: %s", self.settings.ray_app_name,
                            f"{len(self.replicas)} replicas" if now else f"no live replica ({self.board_error})")
                was = now

    def status(self) -> EngineStatus:
        replicas = self.replicas
        digests = {origin.digest: name for name, origin in self._adapters.items()}
        return EngineStatus(
            running=sum(r.running for r in replicas),
            max_running=sum(r.max_running for r in replicas) or self.rows_per_replica,
            kv_cache_bytes=sum(r.kv_cache_bytes for r in replicas),
            kv_cache_max_bytes=sum(r.kv_cache_max_bytes for r in replicas),
            adapters=tuple(sorted(self._adapters)),
            details={
                "engine": "ray",
                "app": self.settings.ray_app_name,
                "replicas": [
                    {**d, "adapters": [{**a, "engine_name": digests.get(a["digest"])} for a in d["adapters"]]}
                    for d in (r.as_dict() for r in replicas)
                ],
                **({"board_error": self.board_error} if self.board_error else {}),
            },
            available=bool(replicas),
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        remotes = self._streams.handles()
        for remote in remotes:
            _cancel(remote)
        tasks = [r.task for r in remotes if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self.owns_ray:
            await asyncio.to_thread(ray.shutdown)


def _cancel(remote: _Remote) -> None:
    """Stop one request (any thread, idempotent): cancel its response, on the event loop that relays it."""
    if remote.cancelled or remote.task is None:
        return
    remote.cancelled = True
    remote.task.get_loop().call_soon_threadsafe(remote.response.cancel)


def _cancelled(request: EngineRequest, deltas: int, first_token_at: float | None) -> Finished:
    """The end of a request aborted here: the replica's usage never comes, the deltas streamed stand for it."""
    return Finished(reason="cancelled", usage=Usage(0, deltas),
                    timings=Timings(request.received_at, None, first_token_at, time.perf_counter()))


def _localized(request: EngineRequest, finished: Finished, first_token_at: float | None) -> Finished:
    """The replica's Finished on this process's clock: the replica's instants shifted so that its end is now."""
    now = time.perf_counter()
    t = finished.timings
    scheduled = None
    if t.scheduled_at is not None:
        scheduled = max(request.received_at, t.scheduled_at + (now - t.finished_at))
        if first_token_at is not None:
            scheduled = min(scheduled, first_token_at)
    return replace(finished, timings=Timings(request.received_at, scheduled, first_token_at, now))
