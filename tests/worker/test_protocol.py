"""The protocol module: parsing (every error code) and encoding. No server."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import protocol as p
from wire.errors import ErrorCode, ProtocolError
from wire.protocol import CLIENT_TYPES

COMPAT_GENERATE = {
    "type": "generate",
    "messages": [{"role": "user", "content": "Привет!"}],
    "session_id": "unique-session-id",
    "system_prompt": "Ты полезный ассистент",
    "max_tokens": 512,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
}


def code_of(frame: str | bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        p.parse_client_message(frame)
    return info.value.code


def test_seed_protocol_messages_parse():
    """The documented messages of the existing clients parse unchanged."""
    assert isinstance(p.parse_client_message('{"type": "ping"}'), p.Ping)
    load = p.parse_client_message('{"type": "load_adapter", "adapter_path": "demo-a"}')
    assert isinstance(load, p.LoadAdapter) and load.adapter_path == "demo-a"
    unload = p.parse_client_message('{"type": "load_adapter", "adapter_path": null}')
    assert isinstance(unload, p.LoadAdapter) and unload.adapter_path is None
    gen = p.parse_client_message(json.dumps(COMPAT_GENERATE))
    assert isinstance(gen, p.Generate)
    assert (gen.session_id, gen.max_tokens, gen.temperature, gen.top_k, gen.top_p) == (
        "unique-session-id", 512, 0.7, 50, 0.9)
    assert gen.messages[0].text() == "Привет!" and not gen.adapter_given


def test_extensions_parse():
    """Content parts, sampling extras, per-request adapter, cancel, status and list_adapters parse."""
    gen = p.parse_client_message(json.dumps({
        "type": "generate",
        "messages": [{"role": "user", "content": [{"type": "image", "image": "aGk="}, {"type": "text", "text": "x"}]}],
        "temperature": 0, "seed": 7, "repetition_penalty": 1.1, "stop": ["\n\n"], "adapter": None,
    }))
    assert gen.adapter_given and gen.adapter is None and len(gen.images()) == 1 and gen.temperature == 0
    assert isinstance(p.parse_client_message('{"type": "cancel", "session_id": "s"}'), p.Cancel)
    assert isinstance(p.parse_client_message('{"type": "status"}'), p.StatusRequest)
    assert isinstance(p.parse_client_message('{"type": "list_adapters"}'), p.ListAdapters)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", ErrorCode.INVALID_JSON),
        ("", ErrorCode.INVALID_JSON),
        ("[1, 2]", ErrorCode.INVALID_MESSAGE),
        ('"ping"', ErrorCode.INVALID_MESSAGE),
        ('{"kind": "ping"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": 5}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "teleport"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": "ping"}', ErrorCode.UNSUPPORTED_FRAME),
        ('{"type": "ping", "extra": 1}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "load_adapter"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "load_adapter", "adapter_path": 3}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "load_adapter", "adapter_path": ""}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "cancel"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "generate"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "generate", "messages": []}', ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_frames_get_precise_codes(frame, code):
    """Each kind of bad frame maps to its own stable code."""
    assert code_of(frame) == code


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": -1},
        {"max_tokens": 0},
        {"max_tokens": "512"},
        {"max_tokens": 1.5},
        {"max_tokens": True},
        {"temperature": -0.1},
        {"temperature": "hot"},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"top_p": 1.5},
        {"top_p": 0},
        {"top_k": -1},
        {"seed": -3},
        {"repetition_penalty": 0},
        {"stop": [""]},
        {"stop": "x"},
        {"session_id": ""},
        {"session_id": "x" * 129},
        {"session_id": 5},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": []}]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"unexpected": 1},
    ],
)
def test_malformed_generate_fields_are_invalid_message(change):
    """Missing, extra, mistyped and out-of-range fields of generate are invalid_message."""
    assert code_of(json.dumps({**COMPAT_GENERATE, **change})) == ErrorCode.INVALID_MESSAGE


def test_encode_puts_type_first_and_omits_unset_fields():
    """Encoded server messages start with type; optional fields that were not set are absent."""
    frame = p.encode(p.Error(code=ErrorCode.BUSY, message="full", retryable=True))
    assert frame.startswith('{"type": "error"')
    assert json.loads(frame) == {"type": "error", "code": "busy", "message": "full", "retryable": True}
    assert json.loads(p.encode(p.AdapterLoaded(adapter_path="demo-a"))) == {
        "type": "adapter_loaded", "adapter_path": "demo-a"}
    done = p.Done(content="x", session_id="s", finish_reason="stop",
                  usage=p.Usage(prompt_tokens=1, completion_tokens=1, max_tokens=5),
                  timings=p.Timings(queue_ms=0, ttft_ms=1, total_ms=2, tokens_per_s=None), adapter=None)
    decoded = json.loads(p.encode(done))
    assert decoded["adapter"] is None and "seed" not in decoded
    assert isinstance(p.parse_server_message(p.encode(done)), p.Done)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_parser_never_crashes(frame):
    """Any frame either parses or raises ProtocolError with a known code (fuzzed)."""
    try:
        p.parse_client_message(frame)
    except ProtocolError as exc:
        assert exc.code in set(ErrorCode)


@pytest.mark.parametrize("frame", [
    '{"type": "ping", "x": ' + "1" * 5000 + "}",
    json.dumps(COMPAT_GENERATE)[:-1] + ', "seed": ' + "9" * 4301 + "}",
])
def test_an_integer_of_more_than_4300_digits_is_invalid_json(frame):
    """json.loads raises ValueError (not JSONDecodeError) for such integers: still invalid_json."""
    assert code_of(frame) == ErrorCode.INVALID_JSON


@pytest.mark.parametrize("frame", [
    '{"type": "generate", "session_id": "\\udc00", "messages": [{"role": "user", "content": "x"}]}',
    '{"type": "generate", "messages": [{"role": "user", "content": "\\ud800"}]}',
    '{"type": "generate", "system_prompt": "x\\udfff", "messages": [{"role": "user", "content": "x"}]}',
    '{"type": "ping", "\\udc00": 1}',
    '{"type": "cancel", "session_id": "\\udbff"}',
])
def test_a_lone_surrogate_is_invalid_message(frame):
    """Half of a UTF-16 pair is not text; the refusal does not carry it back as a session_id either."""
    with pytest.raises(ProtocolError) as info:
        p.parse_client_message(frame)
    assert info.value.code == ErrorCode.INVALID_MESSAGE and "surrogate" in info.value.message
    assert info.value.session_id is None
    p.encode(p.error_message(info.value, session_id=info.value.session_id)).encode("utf-8")  # sendable


def test_an_escaped_surrogate_pair_is_one_character():
    """json.dumps escapes an emoji as a pair: that is valid text."""
    gen = p.parse_client_message(json.dumps({**COMPAT_GENERATE, "session_id": "s\U0001F600"}))
    assert gen.session_id == "s\U0001F600"


def test_errors_quote_client_input_briefly():
    """A megabyte field name is shortened in the message, and no error message exceeds 1000 characters."""
    with pytest.raises(ProtocolError) as info:
        p.parse_client_message(json.dumps({"type": "ping", "k" * 1_000_000: 1}))
    assert len(info.value.message) < 300
    long = p.error_message(ProtocolError("x" * 100_000))
    assert len(long.message) == p.MAX_ERROR_MESSAGE_CHARS


def test_a_frame_with_too_many_json_items_is_refused_before_parsing(monkeypatch):
    """400,000 messages in 13 MiB: refused on a count of separators, without json.loads or validation."""
    frame = json.dumps({"type": "generate", "messages": [{"role": "user", "content": "x"}] * 400_000})

    def never(*args, **kwargs):
        raise AssertionError("the frame was parsed")

    monkeypatch.setattr(p.json, "loads", never)
    with pytest.raises(ProtocolError) as info:
        p.parse_client_message(frame)
    assert info.value.code == ErrorCode.INVALID_MESSAGE and "MAX_FRAME_JSON_ITEMS" in info.value.message


@pytest.mark.parametrize(("messages", "what"), [
    ([{"role": "user", "content": "x"}] * 300, "messages"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}] * 300}], "content parts"),
    ([{"role": "user", "content": [{"type": "text", "text": "x"}] * 100}] * 3, "content parts"),
])
def test_messages_and_parts_are_counted_before_models_are_built(monkeypatch, messages, what):
    """More messages or content parts than the limits: refused before pydantic builds a model per item."""
    class NoValidation:
        def validate_python(self, data):
            raise AssertionError("the models were built")

    monkeypatch.setattr(p, "_client_adapter", NoValidation())
    with pytest.raises(ProtocolError) as info:
        p.parse_client_message(json.dumps({**COMPAT_GENERATE, "messages": messages}))
    assert info.value.code == ErrorCode.INVALID_MESSAGE and f"too many {what}" in info.value.message
    assert info.value.session_id == COMPAT_GENERATE["session_id"]


@pytest.mark.parametrize("frame", [
    json.dumps({"type": "ping", "x": "A" * 1_000_000}),
    json.dumps({**COMPAT_GENERATE, "top_k": "x", "system_prompt": "A" * 1_000_000}),
    '{"type": "ping", "x": "' + "A" * 1_000_000,
    json.dumps({**COMPAT_GENERATE, "session_id": "\udc00", "system_prompt": "A" * 1_000_000}),
])
def test_a_refused_frame_is_not_kept_alive_by_a_reference_cycle(frame):
    """Once the error is handled the frame is freed at once, not at the next garbage collection (hundreds of MB
    piled up under a stream of refused 16 MiB frames)."""
    before = sys.getrefcount(frame)
    with pytest.raises(ProtocolError):
        p.parse_client_message(frame)
    assert sys.getrefcount(frame) == before


@pytest.mark.parametrize("kind", CLIENT_TYPES)
def test_every_client_message_may_carry_a_request_id(kind):
    """request_id is an optional string of 1 to 128 characters on every client message."""
    fields = {"ping": {}, "status": {}, "list_adapters": {}, "load_adapter": {"adapter_path": None},
              "cancel": {"session_id": "s"}, "generate": {"messages": [{"role": "user", "content": "hi"}]}}[kind]
    message = p.parse_client_message(json.dumps({"type": kind, "request_id": "r-1", **fields}))
    assert message.request_id == "r-1"
    assert p.parse_client_message(json.dumps({"type": kind, **fields})).request_id is None
    for bad in ("", "x" * 129, 7):
        with pytest.raises(ProtocolError) as refused:
            p.parse_client_message(json.dumps({"type": kind, "request_id": bad, **fields}))
        assert refused.value.code == ErrorCode.INVALID_MESSAGE and refused.value.request_id is None


def test_a_refused_message_keeps_its_request_id_for_the_error():
    """A message refused by the parser (a known type, or an unknown one) still has its request_id to answer with."""
    with pytest.raises(ProtocolError) as refused:
        p.parse_client_message('{"type": "generate", "request_id": "r-2", "messages": []}')
    assert refused.value.request_id == "r-2"
    with pytest.raises(ProtocolError) as unknown:
        p.parse_client_message('{"type": "teleport", "request_id": "r-3"}')
    assert unknown.value.code == ErrorCode.UNKNOWN_TYPE and unknown.value.request_id == "r-3"


def test_request_id_is_encoded_only_when_there_is_one():
    """A reply carries request_id when it answers a message that had one, and omits it otherwise (never null)."""
    assert json.loads(p.encode(p.Pong())) == {"type": "pong"}
    assert json.loads(p.encode(p.Pong(request_id=None))) == {"type": "pong"}
    assert json.loads(p.encode(p.Pong(request_id="r-1"))) == {"type": "pong", "request_id": "r-1"}
    assert p.parse_server_message('{"type": "pong", "request_id": "r-1"}').request_id == "r-1"


def test_every_error_code_has_a_class_of_its_own():
    """Each code is raised by its own class (``error_class``), never by overriding another class's code."""
    import inspect

    from wire.errors import ServiceError, error_class

    for code in ErrorCode:
        cls = error_class(code)
        assert cls.code == code and issubclass(cls, ServiceError)
        assert cls(f"a {code}").code == code
    assert "code" not in inspect.signature(ServiceError.__init__).parameters
