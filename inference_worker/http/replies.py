"""How the HTTP routes answer: the one error reply, JSON without caching, and a server-sent event stream that stops
its generation as soon as the client goes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from wire.errors import ServiceError
from wire.http import error_body, error_headers, status_of


def error_reply(error: ServiceError, status: int | None = None,
                headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error reply: ``error``'s status (or ``status``), its body, Retry-After when retryable."""
    status = status or status_of(error)
    return JSONResponse(error_body(error, status), status_code=status,
                        headers={**error_headers(error, status), **(headers or {})})


def json_reply(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def sse(payload: Any) -> bytes:
    """One server-sent event: ``data: <json>`` (or the literal ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class EventStream(StreamingResponse):
    """``text/event-stream`` that listens for the client's disconnect the whole time, not only when it writes: a
    client that goes while its request waits in the queue or in a long prefill stops it at once (the body iterator
    is cancelled, which closes the request front's stream)."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the client went while a chunk was written
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            try:
                await self.listen_for_disconnect(receive)
            finally:
                group.cancel_scope.cancel()
        # Closed now, not when the garbage collector gets to it: its `finally` ends the request's streams.
        close = getattr(self.body_iterator, "aclose", None)
        if close is not None:
            await close()
