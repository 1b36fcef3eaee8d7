"""The default engine: continuous-batching transformers, in this process (a real server on an ephemeral port)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from inference_worker.embedded import EmbeddedWorker

from .targets import StartContext, Target


def missing(ctx: StartContext) -> str | None:
    return None  # the main virtual environment is all it needs


@contextmanager
def start(ctx: StartContext) -> Iterator[Target]:
    settings = ctx.settings()
    with EmbeddedWorker(settings) as worker:
        yield Target(engine="transformers", url=worker.url, http=worker.http, api=worker.api,
                     max_new_tokens=settings.max_new_tokens, max_queue_size=settings.max_queue_size,
                     vision_adapters=True, infer_system_prompt=settings.infer_system_prompt)
