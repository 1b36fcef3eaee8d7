"""Ray Serve specifics, through the Ray front of the session's cluster (two replicas of the demo model, two adapters
each): adapter affinity seen in the replicas' status, spread over replicas, a replica killed mid-stream, readiness
that follows the deployment. The protocol itself is checked by the conformance suite (``engine_ray.py``)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from checkpoints.demo import DemoPaths

from ..conftest import unavailable, worker_settings
from ..helpers import Client, Stream, copy_adapter, edit_config, greedy
from . import ray_cluster

_fresh = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(demo: DemoPaths, adapter_root: Path) -> ray_cluster.RayCluster:
    if importlib.util.find_spec("ray") is None:
        unavailable("ray[serve] is not installed (requirements/worker.txt)")
    return ray_cluster.ensure(worker_settings(demo, adapter_root))


@pytest.fixture
def front(cluster: ray_cluster.RayCluster) -> Any:
    assert cluster.front is not None
    return cluster.front


def fresh_adapter(demo: DemoPaths, adapter_root: Path) -> str:
    """A copy of demo-a with its own content digest (no replica holds it yet), loadable by path."""
    n = next(_fresh)
    path = copy_adapter(demo.store_dir / "demo-a", adapter_root / f"ray-fresh-{os.getpid()}-{n}")
    edit_config(path, lora_alpha=16 + n)
    return str(path)


def replicas(client: Client) -> list[dict[str, Any]]:
    status = client.request({"type": "status"}, "status")
    return status["engine_details"]["replicas"]


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll until ``check`` returns something true (status is reported every RAY_STATUS_PERIOD_S)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.2)


def served(reports: list[dict[str, Any]], digest: str) -> dict[str, int]:
    return {r["replica"]: r["served"].get(digest, 0) for r in reports}


def holders(reports: list[dict[str, Any]], digest: str) -> set[str]:
    return {r["replica"] for r in reports if any(a["digest"] == digest for a in r["adapters"])}


def http_status(front: Any, path: str) -> int:
    try:
        with urllib.request.urlopen(front.http + path, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_requests_for_one_adapter_land_on_the_replica_that_loaded_it(front, demo, adapter_root):
    """Every request for an adapter is served by the one replica that holds it (the replicas' own counts)."""
    with Client(front.url) as c:
        until(lambda: len(replicas(c)) == ray_cluster.REPLICAS, "both replicas report")
        loaded = c.load(fresh_adapter(demo, adapter_root))
        assert loaded["type"] == "adapter_loaded", loaded
        digest = loaded["digest"]
        for _ in range(6):
            assert c.generate(**greedy(max_tokens=8)).terminal["type"] == "done"
        reports = until(lambda: (r := replicas(c)) and sum(served(r, digest).values()) == 6 and r,
                        "the replicas report 6 requests for the adapter")
        counts = served(reports, digest)
        assert sorted(counts.values()) == [0, 6], counts
        (home,) = holders(reports, digest)
        assert counts[home] == 6
        # /metrics shows the replicas and which adapters each holds
        _, text = front_metrics(front)
        assert text["inference_replicas"][()] == ray_cluster.REPLICAS
        assert text["inference_replica_adapter_loaded"][(home, digest[:16])] == 1


def front_metrics(front: Any) -> tuple[int, dict[str, dict[tuple[str, ...], float]]]:
    with urllib.request.urlopen(front.http + "/metrics", timeout=10) as r:
        body = r.read().decode()
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            key = tuple(sample.labels[k] for k in ("replica", "digest") if k in sample.labels)
            out.setdefault(sample.name, {})[key] = sample.value
    return 200, out


def test_more_adapters_than_one_replica_holds_spread_over_both(cluster, front, demo, adapter_root):
    """Three new adapters with two per replica: both replicas serve some, none holds more than two.

    From empty replicas (a fresh deployment): Serve sends a new adapter to a replica with the fewest adapters, so the
    second goes where the first is not. Once every replica is full (as earlier tests leave them), a new adapter
    goes to either at random, and three could all land on one."""
    cluster.delete()
    cluster.deploy()
    until(lambda: http_status(front, "/ready") == 200, "/ready turns 200 after the redeploy", timeout=120)
    digests = []
    with Client(front.url) as c:
        until(lambda: len(replicas(c)) == ray_cluster.REPLICAS
              and not any(r["adapters"] for r in replicas(c)), "two fresh replicas report", timeout=120)
        for _ in range(ray_cluster.ADAPTERS_PER_REPLICA + 1):
            loaded = c.load(fresh_adapter(demo, adapter_root))
            assert loaded["type"] == "adapter_loaded", loaded
            digests.append(loaded["digest"])
            assert c.generate(**greedy(max_tokens=8)).terminal["type"] == "done"
        reports = until(lambda: (r := replicas(c)) and all(sum(served(r, d).values()) == 1 for d in digests) and r,
                        "the replicas report one request per adapter")
    serving = {replica for d in digests for replica, n in served(reports, d).items() if n}
    assert len(serving) == ray_cluster.REPLICAS, reports
    for r in reports:
        assert len(r["adapters"]) <= ray_cluster.ADAPTERS_PER_REPLICA, r


def test_a_replica_killed_mid_stream_fails_its_streams_retryably_and_others_finish(cluster, front, demo,
                                                                                   adapter_root):
    """Killing the replica of a running stream: that stream gets replica_failed (retryable), a stream on the
    other replica finishes, new requests for the same adapter succeed, and Serve brings the replica back."""
    import ray

    with Client(front.url) as c, Client(front.url) as other:
        until(lambda: len(replicas(c)) == ray_cluster.REPLICAS, "both replicas report")
        loaded = c.load(fresh_adapter(demo, adapter_root))
        digest = loaded["digest"]
        c.send({"type": "generate", "session_id": "doomed", **greedy(max_tokens=2000)})
        first = c.recv()
        assert first["type"] == "token", first
        # Serve routes a base request to the less loaded replica: the one not running the doomed stream.
        other.send({"type": "generate", "session_id": "survivor", **greedy(max_tokens=600)})
        assert other.recv()["type"] == "token"
        reports = until(lambda: (r := replicas(c)) and [x["running"] for x in r] == [1, 1] and r,
                        "one stream on each replica")
        (victim,) = [r for r in reports if digest in {a["digest"] for a in r["adapters"]}]
        results: dict[str, Stream] = {}
        threads = [threading.Thread(target=lambda: results.__setitem__("survivor", other.collect("survivor")))]
        threads[0].start()
        ray.kill(cluster.replica_actor(victim["actor"]), no_restart=True)
        doomed = c.collect("doomed")
        threads[0].join(120)
        assert doomed.terminal["type"] == "error", doomed.terminal
        assert doomed.terminal["code"] == "replica_failed" and doomed.terminal["retryable"] is True
        assert results["survivor"].terminal["type"] == "done", results["survivor"].terminal
        retry = c.generate(**greedy(max_tokens=8)).terminal  # the connection's adapter, on the surviving replica
        assert retry["type"] == "done", retry
        until(lambda: len(r := replicas(c)) == ray_cluster.REPLICAS and victim["replica"] not in
              {x["replica"] for x in r}, "Serve replaced the killed replica", timeout=120)


def test_readiness_follows_the_deployment(cluster, front):
    """Without the application the front answers /ready 503 and refuses handshakes; redeployed, it is ready."""
    assert http_status(front, "/ready") == 200
    cluster.delete()
    try:
        until(lambda: http_status(front, "/ready") == 503, "/ready turns 503")
        with pytest.raises(Exception, match="503"):
            Client(front.url, open_timeout=10)
    finally:
        cluster.deploy()
    until(lambda: http_status(front, "/ready") == 200, "/ready turns 200 again", timeout=120)
    with Client(front.url) as c:
        assert c.generate(**greedy(max_tokens=8)).terminal["type"] == "done"


def test_serve_config_builder_takes_settings_from_args():
    """A Serve config file's args (strings) become the settings: replicas, CPUs, autoscaling bounds."""
    if importlib.util.find_spec("ray") is None:
        unavailable("ray[serve] is not installed (requirements/worker.txt)")
    from inference_worker.ray.replica import app_builder

    fixed = app_builder({"model_name": "m", "ray_replicas": "3", "ray_cpus_per_replica": "0.5",
                         "max_batch_rows": "4"})._bound_deployment
    assert (fixed.name, fixed.num_replicas) == ("Replica", 3)
    assert fixed.ray_actor_options["num_cpus"] == 0.5
    assert fixed._deployment_config.max_ongoing_requests == 8  # twice the batch rows
    scaled = app_builder({"model_name": "m", "ray_min_replicas": "1", "ray_max_replicas": "4"})._bound_deployment
    autoscaling = scaled._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 4)
    with pytest.raises(ValueError, match="RAY_MIN_REPLICAS"):
        app_builder({"model_name": "m", "ray_min_replicas": "5", "ray_max_replicas": "4"})
