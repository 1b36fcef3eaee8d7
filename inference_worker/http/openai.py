"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions`` (streamed or not), and vLLM's
``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``.

``model`` names the base model (its id in ``/v1/models``) or an adapter: a name in the adapter store, any reference
``load_adapter`` takes, or a ``lora_name`` given to ``/v1/load_lora_adapter`` (vLLM's convention). Each choice of a
request (``n``) is its own request through the request front, so the choices run as rows of one batch. The body is
parsed and checked by :mod:`wire.openai`; every refusal is an HTTP status with the one error body (:mod:`wire.http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire import openai as oa
from wire.errors import (
    AdapterConflict,
    AdapterNotFound,
    InternalError,
    NotReady,
    ProtocolError,
    ServiceError,
    ShuttingDown,
)
from wire.http import error_body

from ..engines.base import TextDelta
from ..events import Completed, Failed, FrontEvent
from ..service import Service
from .replies import EventStream, json_reply, sse
from .runs import ClientGone, admit, first_event, merged, unless_disconnected
from .schemas import json_body

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
_PARSE_IN_PLACE_BYTES = 64 * 1024  # larger bodies are parsed on the service's parse thread


class LoadLoraRequest(BaseModel):
    """vLLM's body: ``lora_path`` is an adapter reference (a store name, s3://, an allowed local path); the adapter
    is served as ``model`` = ``lora_name``. Without ``lora_path``, ``lora_name`` is the reference."""

    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str = Field(min_length=1, max_length=1024)
    lora_path: str | None = Field(None, min_length=1, max_length=1024)
    load_inplace: bool = False


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lora_name: str = Field(min_length=1, max_length=1024)
    lora_int_id: int | None = None


class Models:
    """Which adapter a ``model`` names: the base, an alias from ``/v1/load_lora_adapter``, or a reference."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.aliases: dict[str, str] = {}  # lora_name → adapter reference
        self.changing = asyncio.Lock()  # one load or unload at a time: a name is checked and taken atomically

    def base_ids(self) -> set[str]:
        return {self.service.public_model_name, self.service.settings.model_name}

    def adapter_for(self, model: str) -> str | None:
        if model in self.base_ids():
            return None
        return self.aliases.get(model, model)


def _models(request: Request) -> Models:
    return request.app.state.models  # type: ignore[no-any-return]


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


async def _body(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise oa.validation_error(exc) from None


# ---- models ----------------------------------------------------------------------------------------------------------
@router.get("/models", summary="The base model and the adapters that `model` may name")
async def list_models(request: Request) -> Response:
    service, models = _service(request), _models(request)
    if service.draining:
        raise ShuttingDown("the worker is shutting down")
    if not service.ready:
        raise NotReady("the model is still loading; retry later")
    base = service.public_model_name
    created = int(service.started_at)
    limits = service.settings
    entries: dict[str, dict[str, Any]] = {base: {
        "id": base, "object": "model", "created": created, "owned_by": "inference-worker", "root": base,
        "parent": None, "max_model_len": limits.max_prompt_tokens + limits.max_new_tokens}}

    def adapter(model_id: str, root: str, loaded: bool) -> None:
        entries.setdefault(model_id, {"id": model_id, "object": "model", "created": created,
                                      "owned_by": "inference-worker", "root": root, "parent": base, "loaded": loaded})

    assert service.registry is not None
    for name, ref in sorted(models.aliases.items()):
        adapter(name, ref, any(e.ref == ref for e in service.registry.loaded.values()))
    for entry in sorted(service.registry.loaded.values(), key=lambda e: e.ref):
        adapter(entry.ref, entry.ref, True)
    try:
        for item in (await service.list_adapters()).items:
            adapter(item.name, item.name, item.loaded)
    except ServiceError as exc:  # the store is down: what is loaded can still be named
        log.warning("GET /v1/models: the adapter store could not be listed: %s", exc)
    return json_reply({"object": "list", "data": list(entries.values())})


# ---- chat completions ------------------------------------------------------------------------------------------------
@router.post("/chat/completions", summary="Chat completion, streamed (server-sent events) or not",
             openapi_extra=json_body(oa.ChatCompletionRequest, "OpenAI's chat completion request; `model` is the "
                                     "base model's id or an adapter (see GET /v1/models)."))
async def chat_completions(request: Request) -> Response:
    service, models = _service(request), _models(request)
    body = await request.body()
    if len(body) <= _PARSE_IN_PLACE_BYTES:
        chat = oa.parse_chat_request(body, service.parse_limits)
    else:
        loop = asyncio.get_running_loop()
        chat = await loop.run_in_executor(service.parse_pool, oa.parse_chat_request, body, service.parse_limits)
    del body
    most = service.settings.max_choices
    if chat.n > most:
        raise ProtocolError(f"n is {chat.n}, more than the {most} choices a request may have (MAX_CHOICES)",
                            param="n")
    adapter = models.adapter_for(chat.model)
    seeds = [None if chat.seed is None else (chat.seed + i) % 2**63 for i in range(chat.n)]
    messages = [oa.to_generate(chat, adapter, seed) for seed in seeds]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        streams = await admit(service, messages, request_id=completion_id)
    except ServiceError as exc:
        _name_the_model(exc, chat.model, adapter)
        raise
    events = merged(streams)
    reply = _Reply(completion_id, int(time.time()), chat.model, chat.n)
    if chat.stream:
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        return await _stream(request, events, reply, include_usage, adapter)
    try:
        return json_reply(await unless_disconnected(request, reply.collect(events, adapter)))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it: the generation was stopped


class _Reply:
    def __init__(self, completion_id: str, created: int, model: str, n: int) -> None:
        self.id, self.created, self.model, self.n = completion_id, created, model, n
        self.ends: dict[int, Completed] = {}

    def chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse(oa.chunk(self.id, self.created, self.model, index, delta, finish_reason))

    def usage(self) -> tuple[int, int]:
        prompt = next(iter(self.ends.values())).usage.prompt_tokens if self.ends else 0
        return prompt, sum(end.usage.completion_tokens for end in self.ends.values())

    async def collect(self, events: AsyncIterator[tuple[int, FrontEvent]], adapter: str | None) -> dict[str, Any]:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for index, event in events:
                if isinstance(event, Completed):
                    self.ends[index] = event
                elif isinstance(event, Failed):
                    _name_the_model(event.error, self.model, adapter)
                    raise event.error
        if len(self.ends) != self.n:
            raise InternalError("a choice ended without a result")
        prompt, completion = self.usage()
        choices = [(self.ends[i].content, self.ends[i].finish_reason) for i in range(self.n)]
        return oa.completion(self.id, self.created, self.model, choices, prompt, completion)


async def _stream(request: Request, events: Any, reply: _Reply, include_usage: bool,
                  adapter: str | None) -> Response:
    # The status is sent with the first token: a request refused or failed before it (an unknown model, a deadline
    # while queued) gets its own status, not a 200 and an error event.
    try:
        first = await unless_disconnected(request, first_event(events))
    except ClientGone:
        return Response(status_code=499)
    if first is None:
        raise InternalError("the request ended without a result")
    if isinstance(first[1], Failed):
        await events.aclose()
        _name_the_model(first[1].error, reply.model, adapter)
        raise first[1].error

    async def body() -> AsyncIterator[bytes]:
        try:
            for index in range(reply.n):
                yield reply.chunk(index, {"role": "assistant", "content": ""})
            async with contextlib.aclosing(_starting_with(first, events)) as every:
                async for index, event in every:
                    if isinstance(event, TextDelta):
                        yield reply.chunk(index, {"content": event.text})
                    elif isinstance(event, Completed):
                        reply.ends[index] = event
                        yield reply.chunk(index, {}, event.finish_reason)
                    elif isinstance(event, Failed):  # after the status was sent: an error event, then the end
                        yield sse({"error": _error_payload(event.error)})
                        yield sse("[DONE]")
                        return
            if len(reply.ends) != reply.n:
                yield sse({"error": _error_payload(InternalError("a choice ended without a result"))})
            elif include_usage:
                prompt, completion = reply.usage()
                yield sse(oa.usage_chunk(reply.id, reply.created, reply.model, prompt, completion))
            yield sse("[DONE]")
        finally:
            await events.aclose()

    return EventStream(body())


async def _starting_with(first: tuple[int, FrontEvent],
                         events: AsyncIterator[tuple[int, FrontEvent]]) -> AsyncGenerator[tuple[int, FrontEvent], None]:
    """``first`` (already taken from ``events``), then the rest of ``events``."""
    yield first
    async for item in events:
        yield item


def _error_payload(error: ServiceError) -> dict[str, Any]:
    return error_body(error)["error"]  # type: ignore[no-any-return]


def _name_the_model(error: ServiceError, model: str, adapter: str | None) -> None:
    """An unknown adapter named by ``model`` is an unknown model: say so, in OpenAI's terms."""
    if isinstance(error, AdapterNotFound) and adapter is not None:
        error.message = (f"the model {model!r} does not exist: it is neither the base model nor an adapter in the "
                         f"store (GET /v1/models lists them)")


# ---- adapters (vLLM's run-time LoRA routes) --------------------------------------------------------------------------
def _lora_route(path: str, summary: str, body: type[BaseModel], description: str) -> Any:
    """A vLLM LoRA route: a JSON body, and vLLM's plain-text ``Success: ...`` reply."""
    return router.post(path, summary=summary, response_class=PlainTextResponse,
                       openapi_extra=json_body(body, description))


@_lora_route("/load_lora_adapter", "Load an adapter from the adapter store and serve it as `lora_name`",
             LoadLoraRequest, "vLLM's body: lora_name, and optionally lora_path.")
async def load_lora_adapter(request: Request) -> Response:
    service, models = _service(request), _models(request)
    body: LoadLoraRequest = await _body(request, LoadLoraRequest)
    if service.registry is None:
        raise NotReady("the model is still loading; retry later")
    ref = body.lora_path or body.lora_name
    name = body.lora_name
    async with models.changing:
        if name in models.base_ids():
            raise AdapterConflict(f"{name!r} is the base model's name")
        known = models.aliases.get(name)
        if ref != name and known != ref and not (known is not None and body.load_inplace):
            # A name that already stands for other weights must not change under the clients using it.
            if known is not None:
                raise AdapterConflict(f"the adapter {name!r} has already been loaded (from another path; send "
                                      "load_inplace: true to replace it)")
            if await _names_an_adapter(service, name):
                raise AdapterConflict(f"{name!r} already names an adapter (in the store, or loaded): choose another "
                                      "lora_name")
        await service.registry.load(ref)
        if ref != name:
            models.aliases[name] = ref
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def _names_an_adapter(service: Service, name: str) -> bool:
    registry = service.registry
    if registry is not None and any(e.ref == name or e.name == name for e in registry.loaded.values()):
        return True
    # (a store that cannot be listed raises store_unavailable: better than shadowing what may be there)
    return any(item.name == name for item in (await service.list_adapters()).items)


@_lora_route("/unload_lora_adapter", "Stop serving an adapter loaded by /v1/load_lora_adapter",
             UnloadLoraRequest, "vLLM's body: lora_name.")
async def unload_lora_adapter(request: Request) -> Response:
    service, models = _service(request), _models(request)
    name = (await _body(request, UnloadLoraRequest)).lora_name
    async with models.changing:
        ref = models.aliases.get(name, name)
        registry = service.registry
        entries = [e for e in registry.loaded.values() if e.ref == ref] if registry is not None else []
        if not entries and name not in models.aliases:
            raise AdapterNotFound(f"the adapter {name!r} is not loaded")
        if any(entry.default for entry in entries):
            raise AdapterConflict(f"{name!r} is the default adapter (INFERENCE_DEFAULT_ADAPTER): it stays")
        models.aliases.pop(name, None)
        for entry in entries:
            assert registry is not None
            if entry.running:
                entry.evict_pending = True  # evicted when its running requests end
            else:
                await registry.evict(entry)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
