"""What the request front (:meth:`inference_worker.service.Service.generate`) yields, whatever the protocol.

    Failed                                   refused before it was admitted (bad input, busy, shutting down)
    Accepted, TextDelta*, Completed | Failed admitted: text pieces, then exactly one end

A protocol front (the WebSocket session; next, HTTP) only translates these into its own frames: ``Accepted`` comes
at once, before anything is awaited, so a front can answer a refusal synchronously (an ``error`` frame, an HTTP
status) and start streaming otherwise. Pure records: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire import protocol as p
from wire.errors import ServiceError

from .engines.base import FinishReason, TextDelta


@dataclass(frozen=True)
class AdapterHandle:
    """An adapter a request runs with: the reference a client gave, and the content it resolved to (``Loaded.key``;
    None when not resolved yet: the front resolves and loads it)."""

    ref: str
    key: str | None = None


@dataclass(frozen=True)
class Accepted:
    """Admitted: the request holds a place in the batch or the queue until its end."""

    request_id: str  # the id :meth:`Service.abort` takes
    max_tokens: int  # the request's own max_tokens (or the default), capped at MAX_NEW_TOKENS


@dataclass(frozen=True)
class Completed:
    """The request ended normally: a stop, its max_tokens, or a cancel (``finish_reason`` says which)."""

    content: str  # every text piece, joined
    finish_reason: FinishReason
    usage: p.Usage
    timings: p.Timings
    adapter: str | None  # the reference of the adapter it ran with
    seed: int | None  # the seed a sampled request used (None when greedy), to reproduce it


@dataclass(frozen=True)
class Failed:
    """The request ended with an error (or was refused before it was admitted)."""

    error: ServiceError


FrontEvent = Accepted | TextDelta | Completed | Failed

__all__ = ["Accepted", "AdapterHandle", "Completed", "Failed", "FrontEvent", "TextDelta"]
