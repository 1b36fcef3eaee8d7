"""The engine interface: what the server needs from anything that generates text. No torch, no I/O.

Shaped on vLLM's ``AsyncLLM`` and transformers' continuous-batching manager: the server builds a pure
:class:`EngineRequest` (already validated against the limits and the model's capabilities, images already decoded),
iterates the request's events from :meth:`Engine.generate` — :class:`TextDelta` pieces, then exactly one
:class:`Finished` — and may :meth:`Engine.abort` it at any time. Adapters are added and removed by name
(:meth:`Engine.add_adapter` / :meth:`Engine.remove_adapter`); which adapters stay loaded is decided above the engine
(``inference_worker.adapter_registry``). :meth:`Engine.status` reports the running batch and the KV memory.

    async for event in engine.generate(request):
        match event:
            case TextDelta(text=text): ...
            case Finished(reason=reason, error=None): ...
            case Finished(error=error): ...          # the request failed; ``error`` is a ServiceError

The stream of one request always ends with one :class:`Finished`, whatever happens (an abort, a failure of that
request, a failure of the engine), and the text deltas of a request add up to its whole answer.

Deadlines and queueing are the request front's (``Service.generate``): it admits a request before the engine sees it
and, when GENERATION_TIMEOUT_S passes, calls :meth:`Engine.abort` and reports ``deadline_exceeded`` itself. An
engine has no clock of its own for a request and counts only what runs in its batch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from wire.errors import ServiceError

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | user | assistant
    text: str
    images: tuple[Any, ...] = ()  # decoded RGB PIL images, shown before the text


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. Every field is filled (the model's defaults applied by the validator)."""

    temperature: float  # 0: greedy
    top_k: int | None  # None or 0: off
    top_p: float | None  # None or 1.0: off
    repetition_penalty: float | None  # None or 1.0: off
    seed: int  # the request's own random stream; reproduces whatever else runs in the batch
    max_tokens: int
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    turns: tuple[ChatTurn, ...]
    sampling: SamplingParams
    adapter: str | None  # the engine's name of a loaded adapter (Engine.add_adapter), None for the base model
    received_at: float = 0.0  # time.perf_counter() when the server accepted it (queueing is measured from here)


@dataclass(frozen=True)
class TextDelta:
    text: str  # never empty


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Timings:
    """time.perf_counter() instants; ``None`` for what did not happen."""

    received_at: float
    scheduled_at: float | None  # its preparation (then prefill) started: the end of queueing
    first_token_at: float | None
    finished_at: float


@dataclass(frozen=True)
class Finished:
    reason: FinishReason | None  # None when the request failed
    usage: Usage
    timings: Timings
    error: ServiceError | None = None

    @classmethod
    def failed(cls, error: ServiceError, received_at: float, first_token_at: float | None = None) -> Finished:
        """The end of a request that failed now: no finish reason, nothing counted, never scheduled."""
        return cls(reason=None, usage=Usage(0, 0), error=error,
                   timings=Timings(received_at, None, first_token_at, time.perf_counter()))


Event = TextDelta | Finished


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_type: str
    device: str
    dtype: str
    vision: bool
    load_seconds: float
    parameters: int


@dataclass(frozen=True)
class Capabilities:
    """What the validator needs to know about the model to check a request before it reaches the engine."""

    vision: bool
    max_chars_per_token: int  # no token decodes to more characters: bounds the prompt before tokenizing
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # the model's own, for fields a request omits


@dataclass(frozen=True)
class AdapterInfo:
    """What the engine learnt about an adapter it added."""

    name: str
    rank: int
    modules: int  # adapted modules
    vision: bool  # it adapts the vision tower
    parameter_bytes: int


@dataclass(frozen=True)
class AdapterOrigin:
    """Where an adapter's files come from: an engine whose model lives elsewhere (Ray replicas) loads them there."""

    ref: str  # the adapter_path a client gave (store name, s3:// URL or allowed local path)
    digest: str  # the content's digest: the same digest is the same weights


@dataclass(frozen=True)
class EngineStatus:
    running: int  # rows in the running batch
    max_running: int
    kv_cache_bytes: int  # KV memory allocated now
    kv_cache_max_bytes: int  # the bound admission keeps (KV_CACHE_MAX_BYTES)
    adapters: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)  # engine-specific figures, shown in status as they are
    available: bool = True  # it can take requests now (False while a remote engine has no live replica)


@dataclass(frozen=True)
class StepStats:
    """One forward pass of the engine, for metrics: a request's prefill, or a decode step of the batch."""

    kind: Literal["prefill", "decode"]
    rows: int
    tokens: int  # prompt tokens of a prefill; rows of a decode step
    seconds: float
    inter_token_s: tuple[float, ...] = ()  # gaps between consecutive tokens of the rows that produced one


class Engine(Protocol):
    info: ModelInfo
    capabilities: Capabilities

    def generate(self, request: EngineRequest) -> AsyncGenerator[Event, None]:
        """The request's events: text deltas, then exactly one :class:`Finished`. Closing the iterator early aborts
        the request."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop a request (thread-safe, idempotent): its stream ends with ``Finished(reason="cancelled")``."""
        ...

    async def add_adapter(self, name: str, facts: Any, origin: AdapterOrigin | None = None) -> AdapterInfo:
        """Check an adapter (``adapters.validate.AdapterFacts``) against the model and load it as ``name``. On any
        failure (an :class:`~wire.errors.AdapterError`) nothing of it remains. ``origin`` says where the files came
        from, for engines that load them in another process (an in-process engine ignores it)."""
        ...

    async def remove_adapter(self, name: str) -> None:
        """Unload an adapter that no request in the engine uses."""
        ...

    def status(self) -> EngineStatus: ...

    async def close(self) -> None:
        """Finish: every unfinished request ends (``shutting_down``), the model is released."""
        ...
