"""Ray Serve: a front in this process (INFERENCE_ENGINE=ray) and two replicas of the demo model on a local cluster."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from . import ray_cluster
from .targets import StartContext, Target


def missing(ctx: StartContext) -> str | None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        return "ray[serve] is not installed (requirements/worker.txt)"
    return None


@contextmanager
def start(ctx: StartContext) -> Iterator[Target]:
    cluster = ray_cluster.ensure(ctx.settings())
    front = cluster.front
    assert front is not None
    # The cluster outlives this target: the Ray tests use it too; the session fixture shuts it down.
    yield Target(engine="ray", url=front.url, http=front.http, api=front.api,
                 max_new_tokens=cluster.settings.max_new_tokens,
                 max_queue_size=cluster.settings.max_queue_size, vision_adapters=True,
                 infer_system_prompt=front.settings.infer_system_prompt)
