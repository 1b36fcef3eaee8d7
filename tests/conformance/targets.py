"""What the protocol conformance suite runs against: one worker per engine, reached only through its sockets.

Each engine is a module ``engine_<name>.py`` here with

    def missing(ctx: StartContext) -> str | None      # why it cannot run on this machine; None when it can
    @contextmanager
    def start(ctx: StartContext) -> Iterator[Target]   # a ready worker on that engine, stopped on exit

and is listed in :data:`ENGINES`. The suites (``test_protocol_suite.py``, ``test_http_suite.py``) see a
:class:`Target` only: the WebSocket URL, the HTTP bases (the WebSocket port's and the HTTP API's) and the few settings
their assertions depend on, so the same tests hold for an in-process engine, an engine in another virtual environment
and a front that forwards to a cluster.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from checkpoints.demo import DemoPaths
from inference_worker.config import Settings

from ..conftest import unavailable, worker_settings

# Every engine the worker has, in the order the suite runs them (one engine up at a time).
ENGINES: tuple[str, ...] = ("transformers", "vllm", "ray")


@dataclass(frozen=True)
class Target:
    engine: str
    url: str  # ws://host:port
    http: str  # http://host:port: the WebSocket port's own HTTP endpoints (/health, /ready, /metrics)
    api: str  # http://host:port: the HTTP API (HTTP_PORT: /infer, OpenAI-compatible /v1, /docs)
    max_new_tokens: int  # MAX_NEW_TOKENS the worker runs with
    max_queue_size: int  # MAX_QUEUE_SIZE
    vision_adapters: bool  # vision-tower adapters load (else load_adapter refuses them and changes nothing)
    infer_system_prompt: str | None  # INFER_SYSTEM_PROMPT: the system prompt POST /infer adds


@dataclass(frozen=True)
class StartContext:
    demo: DemoPaths
    adapter_root: Path
    tmp: pytest.TempPathFactory

    def settings(self, **overrides: Any) -> Settings:
        """The settings every conformance worker starts from: the demo model and store, ADAPTER_LOCAL_ROOTS, port 0."""
        return worker_settings(self.demo, self.adapter_root, **overrides)


class EngineModule(Protocol):
    def missing(self, ctx: StartContext) -> str | None: ...

    def start(self, ctx: StartContext) -> AbstractContextManager[Target]: ...


def engine_module(name: str) -> EngineModule:
    return importlib.import_module(f"{__package__}.engine_{name}")  # type: ignore[return-value]


def selected_engines() -> tuple[str, ...]:
    """ENGINES, or the subset CONFORMANCE_ENGINES names (comma-separated) for a quicker local run."""
    chosen = os.environ.get("CONFORMANCE_ENGINES", "").strip()
    if not chosen:
        return ENGINES
    names = tuple(name.strip() for name in chosen.split(",") if name.strip())
    unknown = set(names) - set(ENGINES)
    if unknown:
        raise pytest.UsageError(f"CONFORMANCE_ENGINES names unknown engines {sorted(unknown)}; known: {ENGINES}")
    return names


def started(name: str, ctx: StartContext) -> Iterator[Target]:
    """The engine's target; skipped where its prerequisites are missing, which fails in CI (``CI`` set)."""
    module = engine_module(name)
    why = module.missing(ctx)
    if why is not None:
        unavailable(f"engine {name}: {why}")
    with module.start(ctx) as target:
        yield target
