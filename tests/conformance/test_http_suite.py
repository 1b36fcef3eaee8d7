"""The HTTP API and the WebSocket protocol differ only in framing: the same request gives the same output through
either, on every engine.

Greedy requests go through the WebSocket ``generate``, OpenAI's ``/v1/chat/completions`` (with the openai SDK, and as
raw server-sent events) and the original service's ``POST /infer``; their texts, pieces and token counts must be
equal, exactly (on vLLM, whose streams of either protocol may merge pieces, see :func:`same_pieces`). A streamed
request whose client goes stops its generation in the engine, as a WebSocket disconnect does. Runs once per engine
(``targets.ENGINES``); a test sees only the target's sockets and the settings in ``Target``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import Client, Stream, greedy, image_b64, image_message

PROMPT = "Describe the process diagram."
MAX_TOKENS = 24
ADAPTERS = [pytest.param(None, id="base"), pytest.param("demo-a", id="demo-a")]
MERGING_ENGINES = {"vllm"}  # engines whose streams may merge deltas when their consumer lags (see same_pieces)


def sdk(target) -> OpenAI:
    return OpenAI(base_url=target.api + "/v1", api_key="unused", max_retries=0, timeout=120)


def base_model(target) -> str:
    """The base model's id in GET /v1/models (the entry without a parent)."""
    models = httpx2.get(target.api + "/v1/models", timeout=30).json()["data"]
    return next(m["id"] for m in models if m["parent"] is None)


def model_of(target, adapter: str | None) -> str:
    return adapter if adapter is not None else base_model(target)


def ws_generate(target, **request: Any) -> Stream:
    with Client(target.url) as c:
        stream = c.generate(**request)
    assert stream.terminal["type"] == "done", stream.terminal
    assert stream.text == stream.terminal["content"] and stream.tokens
    return stream


def sse_deltas(target, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """POST a streamed chat completion and read its server-sent events raw: the chunks, and every event's data."""
    with httpx2.Client(base_url=target.api, timeout=120) as http, \
            http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data:"):].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert data and data[-1] == "[DONE]" and "[DONE]" not in data[:-1], data[-3:]
    return [json.loads(d) for d in data[:-1]], data


def outcomes(target) -> dict[str, float]:
    """inference_requests_total by outcome, from /metrics."""
    text = httpx2.get(target.http + "/metrics", timeout=10).text
    return {sample.labels["outcome"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "inference_requests_total"}


def sdk_pieces(client: OpenAI, done: dict[str, Any], **request: Any) -> list[str]:
    """A streamed completion through the openai SDK: its content deltas, its framing checked against the WebSocket
    ``done`` of the same request (one role chunk first, one finish_reason, the usage chunk last)."""
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    with_choice = [c for c in chunks if c.choices]
    assert with_choice[0].choices[0].delta.role == "assistant" and not with_choice[0].choices[0].delta.content
    assert [c.choices[0].finish_reason for c in with_choice if c.choices[0].finish_reason] == [done["finish_reason"]]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (done["usage"]["prompt_tokens"],
                                                              done["usage"]["completion_tokens"])
    assert len({c.id for c in chunks}) == 1 and all(c.model == request["model"] for c in chunks)
    return [c.choices[0].delta.content for c in with_choice[1:] if c.choices[0].delta.content is not None]


def sse_pieces(target, done: dict[str, Any], **request: Any) -> list[str]:
    """The same, read as raw server-sent events: ``data:`` lines, ``[DONE]`` last."""
    raw, _ = sse_deltas(target, request)
    assert raw[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert raw[-1]["choices"][0]["delta"] == {} and raw[-1]["choices"][0]["finish_reason"] == done["finish_reason"]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == request["model"] for c in raw)
    return [c["choices"][0]["delta"]["content"] for c in raw[1:] if "content" in c["choices"][0]["delta"]]


def boundaries(pieces: list[str]) -> set[int]:
    ends, at = set(), 0
    for piece in pieces:
        at += len(piece)
        ends.add(at)
    return ends


def same_pieces(target, done: dict[str, Any], runs: dict[str, Callable[[], list[str]]]) -> None:
    """Every run streams the same pieces, piece for piece. vLLM's AsyncLLM merges the deltas of engine steps its
    consumer has not read yet (RequestOutputCollector), so on vLLM a stream of either protocol may come in fewer,
    longer pieces when the worker's loop lags (its first requests, a loaded machine), whatever the protocol: there,
    every run must give the same text cut only where tokens end (no more cuts in all than completion tokens), and
    the pieces themselves are not compared (how many steps were merged depends on the machine's load)."""
    pieces = {name: run() for name, run in runs.items()}
    assert len({"".join(p) for p in pieces.values()}) == 1, pieces
    if target.engine in MERGING_ENGINES:
        cuts = set().union(*(boundaries(p) for p in pieces.values()))
        assert len(cuts) <= done["usage"]["completion_tokens"], f"cut between tokens: {pieces}"
        return
    first, *others = pieces
    for name in others:
        assert pieces[name] == pieces[first], f"{name} and {first} stream different pieces"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_greedy_chat_completion_is_the_websocket_generate_token_for_token(target, adapter):
    """The same greedy text request: the non-streamed completion's content and usage are the WebSocket done's; the
    streamed completion's content deltas are the WebSocket token messages, piece for piece (SDK and raw SSE)."""
    extra = {"adapter": adapter} if adapter is not None else {}
    request = greedy(PROMPT, MAX_TOKENS, **extra)
    done = ws_generate(target, **request).terminal
    assert done["adapter"] == adapter
    if adapter is not None:  # the adapter changes the output: a chat completion that ignored `model` would differ
        assert done["content"] != ws_generate(target, **greedy(PROMPT, MAX_TOKENS)).terminal["content"]
    client = sdk(target)
    model = model_of(target, adapter)
    chat = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0}

    reply = client.chat.completions.create(**chat)
    assert reply.model == model and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == done["content"]
    assert choice.finish_reason == done["finish_reason"]  # stop / length: the same word in both protocols
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == done["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == done["usage"]["completion_tokens"]

    same_pieces(target, done, {
        "websocket": lambda: [t["content"] for t in ws_generate(target, **request).tokens],
        "openai SDK stream": lambda: sdk_pieces(client, done, **chat),
        "raw SSE": lambda: sse_pieces(target, done, **chat),
    })


def test_image_chat_completion_is_the_websocket_generate(target):
    """An image as a data: URL part and the same image in a WebSocket generate give the same greedy output."""
    b64 = image_b64((320, 240))
    text = "Describe this diagram."
    request = {"messages": image_message(b64, text), "max_tokens": MAX_TOKENS, "temperature": 0}
    done = ws_generate(target, **request).terminal
    text_only = ws_generate(target, **greedy(text, MAX_TOKENS)).terminal
    assert done["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + 20, "the image reached the model"
    client = sdk(target)
    url = "data:image/png;base64," + b64
    chat = {"model": base_model(target), "max_tokens": MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]}]}
    reply = client.chat.completions.create(**chat)
    assert reply.choices[0].message.content == done["content"]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"])
    same_pieces(target, done, {
        "websocket": lambda: [t["content"] for t in ws_generate(target, **request).tokens],
        "openai SDK stream": lambda: sdk_pieces(client, done, **chat),
    })


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_infer_is_the_websocket_generate_with_its_system_prompt(target, adapter):
    """POST /infer with a PNG and a prompt describes it exactly as a WebSocket generate of the request /infer builds:
    INFER_SYSTEM_PROMPT as the system prompt, then one user message with the image before the text."""
    b64 = image_b64((320, 240), color=(200, 60, 30))
    text = "What does this diagram show?"
    extra: dict[str, Any] = {"adapter": adapter} if adapter is not None else {}
    if target.infer_system_prompt is not None:
        extra["system_prompt"] = target.infer_system_prompt
    ws = ws_generate(target, messages=image_message(b64, text), max_tokens=MAX_TOKENS, temperature=0, **extra)
    done = ws.terminal
    form = {"prompt": text, "temperature": "0", "max_tokens": str(MAX_TOKENS)}
    if adapter is not None:
        form["adapter"] = adapter
    r = httpx2.post(target.api + "/infer", files={"file": ("diagram.png", base64.b64decode(b64), "image/png")},
                    data=form, timeout=120)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["description"] == done["content"]
    meta = reply["metadata"]
    assert meta["adapter"] == adapter and meta["finish_reason"] == done["finish_reason"]
    assert meta["image_size"] == [320, 240]
    assert meta["usage"]["prompt_tokens"] == done["usage"]["prompt_tokens"]
    assert meta["usage"]["completion_tokens"] == done["usage"]["completion_tokens"]
    if target.infer_system_prompt is not None:  # the system prompt is what made them equal, not a no-op
        without = ws_generate(target, messages=image_message(b64, text), max_tokens=MAX_TOKENS, temperature=0,
                              **{k: v for k, v in extra.items() if k != "system_prompt"}).terminal
        assert without["usage"]["prompt_tokens"] < done["usage"]["prompt_tokens"]


def test_streamed_client_that_disconnects_stops_its_generation(target):
    """A streamed chat completion whose client goes after its first chunks ends in the engine (cancelled), as a
    WebSocket disconnect does: nothing keeps running or queued."""
    before = outcomes(target)
    body = {"model": base_model(target), "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": target.max_new_tokens, "temperature": 0, "stream": True}
    contents = 0
    with httpx2.Client(base_url=target.api, timeout=60) as http, \
            http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                contents += 1
                if contents == 2:
                    break
    assert contents == 2, "the stream ended before two content chunks"
    deadline = time.monotonic() + 30
    with Client(target.url) as watcher:
        while True:
            status = watcher.request({"type": "status"}, "status")
            if (status["running"] == 0 and status["queued"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert status["running"] == 0 and status["queued"] == 0, status
    after = outcomes(target)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert changed == {"cancelled": 1}, f"outcomes counted meanwhile: {changed}"
