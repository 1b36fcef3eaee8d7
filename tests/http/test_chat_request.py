"""wire/openai.py and wire/http.py, pure: what a chat request may hold, its generate, each error code's status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wire import openai as oa
from wire.errors import ErrorCode, InvalidJson, ProtocolError, error_class
from wire.http import STATUS, error_body, error_headers, status_of
from wire.protocol import ParseLimits

USER = [{"role": "user", "content": "Describe the diagram."}]
PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def parse(**fields: Any) -> oa.ChatCompletionRequest:
    return oa.parse_chat_request(json.dumps({"model": "demo", "messages": USER, **fields}).encode())


def refused(body: dict[str, Any] | bytes, limits: ParseLimits = ParseLimits()) -> ProtocolError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ProtocolError) as caught:
        oa.parse_chat_request(raw, limits)
    return caught.value


def test_every_error_code_has_an_http_status_and_a_body_in_openais_shape():
    assert set(STATUS) == set(ErrorCode)
    busy = error_class("busy")("every row is taken")
    assert status_of(busy) == 429 and error_headers(busy)["Retry-After"] == "1"
    body = error_body(busy)
    assert body["error"] == {"message": "every row is taken", "type": "rate_limit_error", "param": None,
                             "code": "busy", "retryable": True}
    assert body["detail"] == "every row is taken"  # what the original service's clients read
    assert error_headers(error_class("unauthorized")("no"))["WWW-Authenticate"] == "Bearer"
    assert error_body(error_class("internal_error")("x"))["error"]["type"] == "server_error"


@pytest.mark.parametrize(("fields", "param"), [
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"foo": 1}, "foo"),
    ({"temperature": "0.5"}, "temperature"),
    ({"n": 0}, "n"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "messages[0].name"),
    ({"messages": [{"role": "tool", "content": "a"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                {"type": "image_url", "image_url": {"url": PNG_URL,
                                                                                    "detail": "high"}}]}]},
     "messages[0].content[1].image_url.detail"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages"),
])
def test_what_the_worker_cannot_honour_is_refused_by_name(fields, param):
    error = refused({"model": "demo", "messages": USER, **fields})
    assert error.param == param, error
    assert error.code == "invalid_message"


def test_neutral_values_of_unsupported_parameters_are_accepted():
    request = parse(logprobs=False, presence_penalty=0, frequency_penalty=0.0, tools=[], tool_choice="none",
                    response_format={"type": "text"}, user="someone", n=1, stream=False)
    assert request.model == "demo"


def test_the_body_is_bounded_before_it_is_parsed():
    assert isinstance(refused(b"{not json"), InvalidJson)
    assert isinstance(refused(b"\xff\xfe"), InvalidJson)
    many = {"model": "demo", "messages": [{"role": "user", "content": "a"}] * 5}
    assert "MAX_CHAT_MESSAGES" in refused(many, ParseLimits(max_messages=4)).message
    items = json.dumps({"model": "demo", "messages": USER, "stop": ["a"] * 3000}).encode()
    assert "MAX_FRAME_JSON_ITEMS" in refused(items, ParseLimits(max_frame_json_items=2048)).message


def test_a_request_becomes_one_generate_per_choice():
    request = parse(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}},
                                     {"type": "text", "text": "What is this?"}]},
    ], max_completion_tokens=7, temperature=0.5, top_p=0.9, top_k=20, repetition_penalty=1.1, stop="END", seed=3)
    message = oa.to_generate(request, "demo-a", seed=4)
    assert message.adapter == "demo-a" and message.adapter_given
    assert [m.role for m in message.messages] == ["system", "user"]
    assert message.messages[1].images()[0].image == PNG_URL and message.messages[1].text() == "What is this?"
    assert (message.max_tokens, message.temperature, message.top_p, message.top_k, message.repetition_penalty,
            message.stop, message.seed) == (7, 0.5, 0.9, 20, 1.1, ["END"], 4)
    base = oa.to_generate(parse(), None, seed=None)
    assert base.adapter is None and base.adapter_given  # the base model, explicitly: not a connection's adapter


def test_replies_have_openais_shape():
    done = oa.completion("c1", 1, "demo", [("a", "stop"), ("b", "length")], prompt_tokens=10, completion_tokens=7)
    assert done["object"] == "chat.completion" and done["usage"] == {"prompt_tokens": 10, "completion_tokens": 7,
                                                                     "total_tokens": 17}
    assert [c["finish_reason"] for c in done["choices"]] == ["stop", "length"]
    assert done["choices"][1]["message"] == {"role": "assistant", "content": "b"}
    piece = oa.chunk("c1", 1, "demo", 1, {"content": "x"})
    assert piece["object"] == "chat.completion.chunk" and piece["choices"][0]["index"] == 1
    assert oa.usage_chunk("c1", 1, "demo", 3, 4)["choices"] == []


def test_a_lone_surrogate_is_refused_as_over_websocket():
    error = refused(b'{"model": "demo", "messages": [{"role": "user", "content": "hi \\udc00"}]}')
    assert "surrogate" in error.message
