"""One local Ray cluster for the tests of this package, with the demo model deployed as two replicas and a front
(INFERENCE_ENGINE=ray) running in this process.

The conformance target (``engine_ray.py``) and the Ray-specific tests (``test_ray.py``) share it: starting Ray and two
replicas costs ~10 s and ~2.5 GB. ``shutdown`` (the finalizer of a package fixture in ``conftest.py``; atexit as a
backstop) stops the front, deletes the application, shuts Ray down and kills any of the cluster's processes still
alive, so no raylet or GCS outlives the tests even when one fails.

Settings that avoid Ray's known hangs: ``address="local"`` (a plain ``ray.init()`` that finds the address file of
a killed cluster hangs for minutes), no dashboard, ``RAY_AUTH_MODE=disabled`` (an old token file cannot turn auth
on), a fresh temp dir, ``OMP_NUM_THREADS=1`` for the replicas, half a CPU per replica and a 1 s health check.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_worker.config import Settings
from inference_worker.embedded import EmbeddedWorker

ROOT = Path(__file__).resolve().parents[2]
APP = "conformance"
REPLICAS = 2
ADAPTERS_PER_REPLICA = 2


@dataclass
class RayCluster:
    temp_dir: Path
    pids: list[int]
    settings: Settings
    front: EmbeddedWorker | None = None

    def deploy(self) -> None:
        from ray import serve

        from inference_worker.ray.replica import build_app

        serve.run(build_app(self.settings), name=APP, route_prefix=None)

    def delete(self) -> None:
        from ray import serve

        serve.delete(APP)

    def replica_actor(self, actor_name: str) -> Any:
        import ray

        return ray.get_actor(actor_name, namespace="serve")


_cluster: RayCluster | None = None
_failure: BaseException | None = None


def cluster_settings(base: Settings) -> Settings:
    return base.model_copy(update={
        "engine": "ray", "ray_app_name": APP, "ray_replicas": REPLICAS, "ray_cpus_per_replica": 0.5,
        "ray_adapters_per_replica": ADAPTERS_PER_REPLICA, "ray_health_check_period_s": 1.0,
        "ray_status_period_s": 0.5, "max_loaded_adapters": 8,
    })


def ensure(base: Settings) -> RayCluster:
    """The session's cluster with the application deployed and a front serving it (started on first use)."""
    global _cluster, _failure
    if _cluster is not None:
        return _cluster
    if _failure is not None:  # do not retry a failed start in every test
        raise RuntimeError("the session's Ray cluster failed to start") from _failure
    try:
        _cluster = _start(cluster_settings(base))
    except BaseException as exc:
        _failure = exc
        shutdown()
        raise
    return _cluster


def _start(settings: Settings) -> RayCluster:
    import ray
    from ray import serve

    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONPATH", "RAY_AUTH_MODE")}
    # The cluster's processes inherit this environment: the replicas import this checkout, one thread each.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        ray.init(address="local", include_dashboard=False, _temp_dir=str(temp_dir), num_cpus=4,
                 log_to_driver=False, configure_logging=False)
    finally:
        for key in ("OMP_NUM_THREADS", "PYTHONPATH"):
            if saved[key] is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved[key]  # type: ignore[assignment]
    atexit.register(shutdown)
    node = ray._private.worker._global_node
    pids = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    cluster = RayCluster(temp_dir, pids, settings)
    global _cluster
    _cluster = cluster
    serve.start(proxy_location="Disabled")
    cluster.deploy()
    cluster.front = EmbeddedWorker(settings).start()
    return cluster


def shutdown() -> None:
    """Stop the front, Serve and Ray; SIGKILL whatever of the cluster is still alive (idempotent)."""
    global _cluster
    cluster, _cluster = _cluster, None
    if cluster is None:
        return
    import ray

    try:
        if cluster.front is not None:
            cluster.front.stop()
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        processes = _with_descendants(cluster.pids)  # the workers (controller, replicas) are the raylet's children
        ray.shutdown()
        deadline = time.monotonic() + 10
        alive = [pid for pid in processes if _alive(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in alive if _alive(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _with_descendants(pids: list[int]) -> list[int]:
    import psutil

    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process is dead: reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
