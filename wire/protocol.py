"""The WebSocket protocol: message models, parsing and encoding. Pure: no I/O, no torch.

Every frame is a JSON object with a ``type``. Client messages are parsed into a discriminated union
(:data:`ClientMessage`); server messages are built from the models below and encoded with :func:`encode`.
docs/protocol.md is the reference, with one example per message.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import ErrorCode, InvalidJson, ProtocolError, ServiceError, UnknownType, UnsupportedFrame

# --------------------------------------------------------------------------------------------------------------------
# Client → server


class _ClientModel(BaseModel):
    # Unknown fields are mistakes, and "512" is not a number: both get an error instead of a guess.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


RequestId = Annotated[str, Field(min_length=1, max_length=128)]


class _ClientMessage(_ClientModel):
    # Optional on every client message: the worker echoes it on every reply that answers this message.
    request_id: RequestId | None = None


class TextPart(_ClientModel):
    type: Literal["text"]
    text: str


class ImagePart(_ClientModel):
    type: Literal["image"]
    image: str = Field(description="base64, or a data:image/(png|jpeg|webp);base64,... URL")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_ClientModel):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def images(self) -> list[ImagePart]:
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if isinstance(p, ImagePart)]


SessionId = Annotated[str, Field(min_length=1, max_length=128)]


class Ping(_ClientMessage):
    type: Literal["ping"]


class LoadAdapter(_ClientMessage):
    type: Literal["load_adapter"]
    # Required, and may be null: null returns this connection to the base model.
    adapter_path: Annotated[str, Field(min_length=1, max_length=1024)] | None


class Generate(_ClientMessage):
    type: Literal["generate"]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    session_id: SessionId | None = None
    system_prompt: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # Upper bounds of temperature and repetition_penalty are settings (validation.py), reported by status.
    temperature: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    stop: list[Annotated[str, Field(min_length=1)]] | None = None
    # Absent: the connection's active adapter. null: the base model. A string: that adapter, for this request only.
    adapter: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    @field_validator("messages")
    @classmethod
    def _last_is_not_assistant(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role == "assistant":
            raise ValueError("the last message must not be from the assistant: there is nothing to answer")
        return messages

    @property
    def adapter_given(self) -> bool:
        """Whether the request names its own adapter (``"adapter": null`` included)."""
        return "adapter" in self.model_fields_set

    def images(self) -> list[ImagePart]:
        return [img for m in self.messages for img in m.images()]


class Cancel(_ClientMessage):
    type: Literal["cancel"]
    session_id: SessionId


class StatusRequest(_ClientMessage):
    type: Literal["status"]


class ListAdapters(_ClientMessage):
    type: Literal["list_adapters"]


ClientMessage = Annotated[
    Ping | LoadAdapter | Generate | Cancel | StatusRequest | ListAdapters, Field(discriminator="type")
]
CLIENT_TYPES = ("ping", "load_adapter", "generate", "cancel", "status", "list_adapters")
_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the size of a frame's structure (filled from the settings: ``Settings.parse_limits()``).

    They bound the parser's own work, so they are checked on the raw JSON before any model is built. Everything else
    about a ``generate`` (stop string lengths, images, tokens, sampling ranges, what the model can do) is checked
    against the settings by ``validation.py``.
    """

    max_messages: int = 256
    max_content_parts: int = 256
    max_stop_strings: int = 8
    max_frame_json_items: int = 65536

    @classmethod
    def unbounded(cls) -> ParseLimits:
        """For a client checking its own requests: the shape and types only; the worker enforces its limits."""
        return cls(max_messages=2**62, max_content_parts=2**62, max_stop_strings=2**62, max_frame_json_items=2**62)


# Error messages are capped: they may quote client input (a field name, a value), and a reply must stay small.
MAX_ERROR_MESSAGE_CHARS = 1000
_QUOTE_CHARS = 64  # of one client-supplied name quoted in an error
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_client_message(frame: str | bytes, limits: ParseLimits = ParseLimits()) -> Any:
    """Parse one frame into a client message model, or raise :class:`ProtocolError` with a precise code.

    This checks the message's shape and types; a ``generate`` is then checked against the worker's limits and the
    model's capabilities by ``validation.py``. The work done here is bounded before it starts: a frame with more than
    ``limits.max_frame_json_items`` JSON items is refused before ``json.loads``, and the numbers of messages, content
    parts and stop strings are checked before the models are built.

    The error raised carries no traceback or context from inside the parser: those hold the frame and its parsed
    copy in reference cycles that only the cyclic garbage collector frees, and a client sending refused 16 MiB frames
    would otherwise pile up hundreds of megabytes between two collections.
    """
    try:
        return _parse(frame, limits)
    except ProtocolError as exc:
        error = exc
    error.__traceback__ = error.__context__ = error.__cause__ = None
    try:
        raise error
    finally:
        del error  # this frame must not hold the exception that holds this frame


def load_json_object(text: str, limits: ParseLimits, *, source: str = "the frame",
                     item: str = "a message") -> dict[str, Any]:
    """``text`` as a JSON object, its items counted before it is parsed (a WebSocket frame, an HTTP body); raises
    :class:`InvalidJson` ("``source`` is not valid JSON") or :class:`ProtocolError` ("``item`` must be an object")."""
    check_json_items(text, limits.max_frame_json_items)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an integer of over 4300 digits
        reason = str(exc) if isinstance(exc, json.JSONDecodeError | RecursionError) else "a number has too many digits"
        raise InvalidJson(f"{source} is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{item} must be a JSON object, got {type(data).__name__}")
    return data


def _parse(frame: str | bytes, limits: ParseLimits) -> Any:
    if isinstance(frame, bytes):
        raise UnsupportedFrame("binary frames are not part of the protocol: send JSON text")
    data = load_json_object(frame, limits)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type"')
    if kind not in CLIENT_TYPES:
        unknown = UnknownType(f"unknown message type {kind[:_QUOTE_CHARS]!r}; known: {', '.join(CLIENT_TYPES)}")
        if _usable_id(data.get("request_id")):
            unknown.request_id = data["request_id"]
        raise unknown
    try:
        if has_lone_surrogate(data):
            # JSON may escape half of a UTF-16 pair ("\udc00"): that is not text, and it cannot be sent back.
            raise ProtocolError("a string holds a lone UTF-16 surrogate (an escape such as \\udc00 without its "
                                "pair): not valid Unicode text")
        if kind == "generate":
            check_generate_sizes(data, limits)
        message = _client_adapter.validate_python(data)
    except (ValidationError, ProtocolError) as exc:
        error = exc if isinstance(exc, ProtocolError) else ProtocolError(f"invalid {kind} message: {_describe(exc)}")
        # A refused generate is still answered under its session_id when it has a usable one, so a client that
        # routes replies by session sees the end of that request.
        error.message_type = kind
        sid = data.get("session_id")
        if kind == "generate" and _usable_id(sid):
            error.session_id = sid
        rid = data.get("request_id")
        if _usable_id(rid):
            error.request_id = rid
        raise error from None
    return message


def _usable_id(value: Any) -> bool:
    """Whether a refused message's ``session_id`` or ``request_id`` can be sent back on its error."""
    return isinstance(value, str) and 0 < len(value) <= 128 and not has_lone_surrogate(value)


def check_json_items(frame: str, most: int) -> None:
    """Refuse, before parsing, a frame with more JSON items than ``most``.

    Parsing time grows with the number of values, not with bytes: 13 MiB of small objects take ~0.2 s to load and
    seconds to validate, while 13 MiB of one image string take milliseconds. Every ``{``, ``[`` and ``,`` is
    counted (those inside strings too: a cheap upper bound); a valid request has at most a few thousand.
    """
    if len(frame) <= most:
        return
    items = frame.count("{") + frame.count("[") + frame.count(",")
    if items > most:
        raise ProtocolError(f"the frame has {items} JSON items ('{{', '[' and ','), more than the {most} a request "
                            "may have (MAX_FRAME_JSON_ITEMS)")


def has_lone_surrogate(data: Any) -> bool:
    """Whether any key or string in ``data`` holds a lone surrogate (ASCII strings are skipped in O(1))."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_generate_sizes(data: dict[str, Any], limits: ParseLimits) -> None:
    """Count messages, content parts and stop strings on the raw JSON, before any model is built."""
    messages = data.get("messages")
    if isinstance(messages, list):
        if len(messages) > limits.max_messages:
            raise ProtocolError(f"too many messages: {len(messages)} > {limits.max_messages} (MAX_CHAT_MESSAGES)")
        parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
        if parts > limits.max_content_parts:
            raise ProtocolError(f"too many content parts: {parts} > {limits.max_content_parts} (MAX_CONTENT_PARTS)")
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > limits.max_stop_strings:
        raise ProtocolError(f"too many stop strings: {len(stop)} > {limits.max_stop_strings}")


def _describe(exc: ValidationError, most: int = 3) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:most]:
        where = ".".join(_quote(p) for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-"))
        parts.append(f"{where or 'message'}: {err['msg']}")
    more = exc.error_count() - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _quote(part: str | int) -> str:
    """A location part of a validation error (a field name may be a client's megabyte-long key), shortened."""
    text = str(part)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…"


def new_session_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------------------------------------------------
# Server → client


class _ServerModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Reply(_ServerModel):
    # The request_id of the client message this answers, when it had one (left out otherwise).
    request_id: str | None = None


class Pong(_Reply):
    type: Literal["pong"] = "pong"


class AdapterLoaded(_Reply):
    type: Literal["adapter_loaded"] = "adapter_loaded"
    adapter_path: str
    name: str | None = None
    digest: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    cached: bool | None = None
    load_ms: float | None = None


class AdapterUnloaded(_Reply):
    type: Literal["adapter_unloaded"] = "adapter_unloaded"


class AdapterProgress(_Reply):
    type: Literal["adapter_progress"] = "adapter_progress"
    adapter_path: str
    stage: Literal["downloading", "verifying", "loading"]
    bytes: int = 0
    total: int | None = None


class Token(_Reply):
    type: Literal["token"] = "token"
    content: str
    session_id: str


class Usage(_ServerModel):
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int


class Timings(_ServerModel):
    queue_ms: float
    ttft_ms: float | None
    total_ms: float
    tokens_per_s: float | None


class Done(_Reply):
    type: Literal["done"] = "done"
    content: str
    session_id: str
    finish_reason: Literal["stop", "length", "cancelled"]
    usage: Usage
    timings: Timings
    adapter: str | None
    seed: int | None = None


class Error(_Reply):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retryable: bool
    session_id: str | None = None
    adapter_path: str | None = None


class AdapterUse(_ServerModel):
    name: str
    adapter_path: str
    digest: str | None = None
    rank: int | None = None
    target_modules: list[str] | None = None
    connections: int
    running: int
    default: bool = False


class Status(_Reply):
    type: Literal["status"] = "status"
    ready: bool
    model: str
    model_type: str
    device: str
    dtype: str
    vision: bool
    loaded_adapters: list[AdapterUse]
    max_loaded_adapters: int
    running: int
    queued: int
    max_running: int
    max_queue: int
    connections: int
    limits: dict[str, Any]
    # Extensions: the engine, and the KV memory of its running batch (KV_CACHE_MAX_BYTES bounds it).
    engine: str | None = None
    kv_cache_bytes: int | None = None
    kv_cache_max_bytes: int | None = None
    engine_details: dict[str, Any] | None = None


class AdapterItem(_ServerModel):
    name: str
    loaded: bool
    digest: str | None = None
    size: int | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    base_model: str | None = None
    peft_version: str | None = None
    created: str | None = None


class Adapters(_Reply):
    type: Literal["adapters"] = "adapters"
    items: list[AdapterItem]


ServerMessage = Annotated[
    Pong | AdapterLoaded | AdapterUnloaded | AdapterProgress | Token | Done | Error | Status | Adapters,
    Field(discriminator="type"),
]
server_message_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)


def encode(message: _Reply) -> str:
    """Serialise a server message: unset fields and a None ``request_id`` are omitted; ``type`` comes first."""
    body = message.model_dump(mode="json", exclude_unset=True)
    body.pop("type", None)
    if body.get("request_id", "") is None:
        del body["request_id"]
    return json.dumps({"type": message.type, **body}, ensure_ascii=False)  # type: ignore[attr-defined]


def error_message(exc: ServiceError, *, session_id: str | None = None, adapter_path: str | None = None) -> Error:
    """The ``error`` message for ``exc``: its client-facing message (never its detail), at most 1000 characters."""
    text = exc.message
    if len(text) > MAX_ERROR_MESSAGE_CHARS:
        text = text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    fields: dict[str, Any] = {"code": exc.code, "message": text, "retryable": exc.retryable}
    if session_id is not None:
        fields["session_id"] = session_id
    if adapter_path is not None:
        fields["adapter_path"] = adapter_path
    return Error(**fields)


def parse_server_message(frame: str | bytes) -> Any:
    """Parse a server frame (used by clients and by tests that check every reply is a valid message)."""
    return server_message_adapter.validate_json(frame)
