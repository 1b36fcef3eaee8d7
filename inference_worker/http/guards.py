"""What every HTTP request passes before a route sees it (pure ASGI middleware, in this order):

0. ``InFlightLimit``: at most MAX_CONNECTIONS requests at once (each may hold a body of MAX_MESSAGE_BYTES); beyond,
   429 ``busy`` with Retry-After, answered before the body is read. Health and readiness probes are never refused.
1. ``BodyLimit``: a body over MAX_MESSAGE_BYTES is refused with 413 before any of it is parsed: at once when
   ``Content-Length`` says so, else as soon as the bytes received pass the bound (chunked uploads).
2. ``BearerAuth``: when INFERENCE_AUTH_TOKEN is set, every path but the public ones (health, readiness, the API's
   docs and service info) needs ``Authorization: Bearer <token>``, compared in constant time.

Both answer with the one error body of :mod:`wire.http`.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wire.errors import CapacityError, RequestTooLarge, ServiceError, Unauthorized

from .replies import error_reply

PUBLIC_PATHS = frozenset({"/", "/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
PUBLIC_PREFIXES = ("/docs/assets/",)


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """Answer a request with ``error``: the routes' own error reply, sent before any route runs."""
    await error_reply(error)(scope, receive, send)


class InFlightLimit:
    def __init__(self, app: ASGIApp, most: int) -> None:
        self.app = app
        self.most = most
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/health", "/ready"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.most:
            await send_error(scope, receive, send, CapacityError(
                f"{self.most} HTTP requests are in flight (MAX_CONNECTIONS); retry later"))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        refusal = RequestTooLarge(f"the request body is over {limit} bytes (MAX_MESSAGE_BYTES)")
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await send_error(scope, receive, send, refusal)
                    return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(scope, receive, send, refusal)


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.expected is None or _public(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if not hmac.compare_digest(_bearer(scope), self.expected):
            await send_error(scope, receive, send,
                             Unauthorized("missing or wrong token: send Authorization: Bearer <token>"))
            return
        await self.app(scope, receive, send)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _bearer(scope: Scope) -> bytes:
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(values) != 1:  # none, or two (which one would count?)
        return b""
    scheme, _, token = values[0].partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""
