"""The messages a client sends, built and checked against the protocol's models before they are sent (pure)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from typing import Any

from wire.errors import ProtocolError
from wire.images import mime_type
from wire.protocol import AdapterProgress, ParseLimits, parse_client_message

from .errors import InvalidRequest

# Local validation checks the shape and types of a request; the worker's configurable limits are its to enforce.
_NO_LIMITS = ParseLimits.unbounded()


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""``adapter=UNSET``: use the connection's adapter (the field is left out); ``None``: the base model."""


def image_part(data: bytes) -> dict[str, str]:
    """An image content part: a data URL for PNG/JPEG/WebP; bare base64 otherwise (the worker then says why not)."""
    encoded = base64.b64encode(data).decode("ascii")
    mime = mime_type(data)
    return {"type": "image", "image": f"data:{mime};base64,{encoded}" if mime else encoded}


def user_message(text: str, image: bytes | None = None, images: Sequence[bytes] = ()) -> dict[str, Any]:
    """A user chat message: the image parts first, then the text (the order Qwen3-VL is trained on)."""
    pictures = ([image] if image is not None else []) + list(images)
    if not pictures:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(p) for p in pictures), {"type": "text", "text": text}]}


def new_session_id() -> str:
    return uuid.uuid4().hex


def generate_message(
    messages: Sequence[dict[str, Any]],
    *,
    session_id: str | None = None,
    system_prompt: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    repetition_penalty: float | None = None,
    stop: Sequence[str] | None = None,
    adapter: str | None = UNSET,
) -> dict[str, Any]:
    """A ``generate`` message (parameters left at ``None`` are left out: the worker's defaults apply)."""
    message: dict[str, Any] = {"type": "generate", "messages": list(messages),
                               "session_id": session_id or new_session_id()}
    floats = {"temperature": temperature, "top_p": top_p, "repetition_penalty": repetition_penalty}
    ints = {"max_tokens": max_tokens, "top_k": top_k, "seed": seed}
    message.update({k: float(v) for k, v in floats.items() if v is not None})
    message.update({k: int(v) for k, v in ints.items() if v is not None})
    if system_prompt:
        message["system_prompt"] = system_prompt
    if stop:
        message["stop"] = list(stop)
    if adapter is not UNSET:
        message["adapter"] = adapter
    return message


def encode_request(message: dict[str, Any]) -> str:
    """The frame for a client message, checked against the protocol's models first (:class:`InvalidRequest`)."""
    frame = json.dumps(message, ensure_ascii=False)
    try:
        parse_client_message(frame, _NO_LIMITS)
    except ProtocolError as exc:
        raise InvalidRequest(str(exc.code), exc.message) from None
    return frame


def describe_progress(progress: AdapterProgress) -> str:
    """``downloading 1.2 of 24.5 MB``, ``verifying``, ``loading``."""
    if progress.total:
        return f"{progress.stage} {progress.bytes / 1e6:.1f} of {progress.total / 1e6:.1f} MB"
    if progress.bytes:
        return f"{progress.stage} {progress.bytes / 1e6:.1f} MB"
    return progress.stage
