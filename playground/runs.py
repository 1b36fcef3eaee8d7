"""One playground run, without any UI: load each output's adapter, stream every output at once, record the outcome.

The app hands :func:`run_outputs` the :class:`~playground.history.Output` records to fill and a callback that renders
batches of :class:`Event`. Outputs are updated in place as things happen, so whatever stops a run — the callback
raising (Streamlit stops a script run when a button is clicked during it), a cancel, a dropped connection — the
records say how far each output got. On an interruption every unfinished generation is cancelled on the worker and
its ``done`` (``cancelled``, with the text so far and the worker's timings) awaited briefly before the exception goes
on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from wire.errors import ErrorCode
from wire.protocol import AdapterItem, AdapterLoaded, AdapterProgress, Done, Status

from .client import ClientCode, PlaygroundError, WorkerClient, new_session_id
from .diff import compare
from .history import Output, RunRecord

BASE_MODEL = "(base model)"  # the picker's entry for no adapter (adapter names cannot contain spaces or parens)


@dataclass(frozen=True)
class Params:
    """The sampling parameters of a run (the same for both outputs of an A/B run)."""

    temperature: float = 0.3
    top_k: int = 50
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int = 42
    repetition_penalty: float = 1.05

    def request_fields(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed, "repetition_penalty": self.repetition_penalty}


@dataclass(frozen=True)
class Event:
    """Something the UI may want to show. The state itself is in the outputs; events say which one changed."""

    kind: Literal["progress", "loaded", "streaming", "token", "end", "tick", "status"]
    lane: int | None = None
    # AdapterProgress / AdapterLoaded for progress / loaded; seconds since the start for tick; Status for status
    detail: Any = None


async def run_outputs(
    client: WorkerClient,
    outputs: Sequence[Output],
    messages: Sequence[dict[str, Any]],
    params: Params,
    *,
    system_prompt: str | None = None,
    on_events: Callable[[list[Event]], object] = lambda events: None,
    tick_s: float = 0.2,
    stop_grace_s: float = 3.0,
    status_every_s: float | None = None,
) -> None:
    """Run every output concurrently on ``client``; returns when all have finished (done, stopped or error).

    With ``status_every_s``, the worker's status is asked for on the same connection from the first token on (then
    at that interval) and delivered as ``status`` events, so a status panel shows the run while it streams.
    """
    queue: asyncio.Queue[Event] = asyncio.Queue()
    sessions = [new_session_id() for _ in outputs]
    tasks = [
        asyncio.create_task(_run_output(client, i, out, sessions[i], messages, params, system_prompt, queue))
        for i, out in enumerate(outputs)
    ]
    poller: asyncio.Task[None] | None = None
    started = time.monotonic()
    finished = False
    try:
        while not (all(t.done() for t in tasks) and queue.empty()):
            try:
                batch = [await asyncio.wait_for(queue.get(), tick_s)]
            except TimeoutError:
                batch = [Event("tick", detail=time.monotonic() - started)]
            while not queue.empty():
                batch.append(queue.get_nowait())
            if poller is None and status_every_s is not None and any(e.kind == "token" for e in batch):
                poller = asyncio.create_task(_poll_status(client, queue, status_every_s, tasks))
            on_events(batch)
        finished = True
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        if not finished:
            await _stop(client, tasks, sessions, outputs, stop_grace_s)


async def _poll_status(client: WorkerClient, queue: asyncio.Queue[Event], every_s: float,
                       tasks: list[asyncio.Task[None]]) -> None:
    while not all(t.done() for t in tasks):
        try:
            status = await client.status()
        except PlaygroundError:
            return
        if not all(t.done() for t in tasks):  # a status taken after the end would say nothing about the run
            queue.put_nowait(Event("status", detail=status))
        await asyncio.sleep(every_s)


async def _run_output(client: WorkerClient, i: int, out: Output, session_id: str, messages: Sequence[dict[str, Any]],
                      params: Params, system_prompt: str | None, queue: asyncio.Queue[Event]) -> None:
    started = time.perf_counter()
    try:
        if out.adapter is not None:
            out.status = "loading"
            async for item in client.load_adapter_events(out.adapter):
                if isinstance(item, AdapterProgress):
                    queue.put_nowait(Event("progress", i, item))
                elif isinstance(item, AdapterLoaded):
                    out.adapter_load = {"cached": item.cached, "load_ms": item.load_ms, "digest": item.digest,
                                        "rank": item.rank}
                    queue.put_nowait(Event("loaded", i, item))
        out.status = "streaming"
        queue.put_nowait(Event("streaming", i))
        started = time.perf_counter()
        async for piece in client.generate(messages, session_id=session_id, adapter=out.adapter,
                                           system_prompt=system_prompt, **params.request_fields()):
            if isinstance(piece, Done):
                apply_done(out, piece)
            else:
                out.text += piece
                queue.put_nowait(Event("token", i))
    except PlaygroundError as exc:
        out.status = "error"
        out.error = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
    finally:
        out.elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        if not out.finished:  # cancelled before the worker's done came back
            out.status = "stopped"
            out.finish_reason = out.finish_reason or "cancelled"
        queue.put_nowait(Event("end", i))


def apply_done(out: Output, done: Done) -> None:
    out.text = done.content  # the worker's full text (equal to the tokens streamed)
    out.finish_reason = done.finish_reason
    out.usage = done.usage.model_dump()
    out.timings = done.timings.model_dump()
    out.seed = done.seed
    out.status = "stopped" if done.finish_reason == "cancelled" else "done"


async def _stop(client: WorkerClient, tasks: list[asyncio.Task[None]], sessions: list[str],
                outputs: Sequence[Output], grace_s: float) -> None:
    """Cancel the unfinished outputs on the worker; wait a little for their ``done``, then give up on them."""
    for task, session_id, out in zip(tasks, sessions, outputs):
        if task.done():
            continue
        cancelled = False
        if out.status == "streaming":
            with contextlib.suppress(PlaygroundError):
                cancelled = await client.cancel(session_id)
        if not cancelled:
            task.cancel()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def finish_record(record: RunRecord) -> RunRecord:
    """Add the A/B comparison once both outputs have text (done or stopped)."""
    if record.mode == "ab" and len(record.outputs) == 2 and all(o.has_text for o in record.outputs):
        record.comparison = compare(record.outputs[0].text, record.outputs[1].text)
    return record


# --------------------------------------------------------------------------------------------------------------------
# The worker's state, for the status panel and the pickers


@dataclass
class WorkerInfo:
    url: str
    status: Status | None = None
    adapters: list[AdapterItem] | None = None
    error: PlaygroundError | None = None  # the worker could not be asked at all
    adapters_error: PlaygroundError | None = None  # status worked but list_adapters failed (a store outage)
    fetched_at: float = 0.0

    @property
    def up(self) -> bool:
        return self.status is not None


async def fetch_worker_info(url: str, *, with_adapters: bool = True, token: str | None = None,
                            timeout_s: float = 5.0) -> WorkerInfo:
    info = WorkerInfo(url, fetched_at=time.monotonic())
    async with WorkerClient(url, token=token, open_timeout=timeout_s, reply_timeout=timeout_s) as client:
        try:
            info.status = await client.status()
        except PlaygroundError as exc:
            info.error = exc
            return info
        if with_adapters:
            try:
                info.adapters = await client.list_adapters()
            except PlaygroundError as exc:
                info.adapters_error = exc
    return info


# --------------------------------------------------------------------------------------------------------------------
# Messages for people

Level = Literal["error", "warning", "info"]

_INPUT_CODES = {ErrorCode.INVALID_IMAGE, ErrorCode.UNSUPPORTED_IMAGE, ErrorCode.IMAGE_TOO_LARGE,
                ErrorCode.IMAGES_NOT_SUPPORTED, ErrorCode.PROMPT_TOO_LONG, ErrorCode.INVALID_MESSAGE,
                ErrorCode.INVALID_JSON, ClientCode.MESSAGE_TOO_BIG}
_ADAPTER_CODES = {ErrorCode.ADAPTER_NOT_FOUND, ErrorCode.ADAPTER_INVALID, ErrorCode.ADAPTER_INCOMPATIBLE,
                  ErrorCode.ADAPTER_FORBIDDEN, ErrorCode.ADAPTER_CONFLICT}


def explain(error: dict[str, Any] | PlaygroundError, url: str = "", adapter: str | None = None) -> tuple[Level, str]:
    """What to tell a person about an error: a level and one or two sentences."""
    if isinstance(error, PlaygroundError):
        code, message, retryable = error.code, error.message, error.retryable
    else:
        code, message, retryable = error["code"], error["message"], bool(error.get("retryable"))
    if code in (ClientCode.UNREACHABLE, ClientCode.TIMEOUT, ClientCode.HANDSHAKE_FAILED, ClientCode.BAD_URL):
        return "error", (f"The worker is down or unreachable: {message}. Start it "
                         f"(`python -m inference_worker --demo`) or point INFERENCE_WS_URL at it.")
    if code == ClientCode.LOADING:
        return "info", "The worker is still loading its model. Try again in a few seconds."
    if code in (ClientCode.DISCONNECTED, ErrorCode.SHUTTING_DOWN):
        return "warning", f"The worker went away ({code}): {message}. Try again when it is back."
    if code == ClientCode.UNAUTHORIZED:
        return "error", f"The worker refused the connection: {message}."
    if code in (ErrorCode.BUSY, ErrorCode.TOO_MANY_SESSIONS):
        return "warning", f"The worker is busy ({code}): {message}. Try again in a moment."
    if code in _INPUT_CODES:
        return "error", f"The worker rejected the input ({code}): {message}."
    if code in _ADAPTER_CODES:
        which = f"Adapter `{adapter}`" if adapter else "The adapter"
        return "error", f"{which} cannot be used ({code}): {message}."
    if code == ErrorCode.STORE_UNAVAILABLE:
        return "warning", f"The adapter store is unavailable: {message}." + (" Try again later." if retryable else "")
    if retryable:
        return "warning", f"{code}: {message}. Trying again later may work."
    return "error", f"{code}: {message}."
