"""The client's errors: one hierarchy, each with a stable ``code`` and ``retryable``.

    PlaygroundError
    ├── WorkerError        the worker answered with an ``error`` (its code: :class:`wire.errors.ErrorCode`)
    ├── WorkerUnavailable  unreachable, loading, shutting_down, unauthorized, handshake_failed, timeout,
    │                      disconnected, bad_url
    ├── InvalidRequest     refused before sending (the protocol's code), or message_too_big
    └── BadFrame           bad_frame: the worker sent something outside the protocol

The codes the client finds itself are :class:`ClientCode`.
"""

from __future__ import annotations

import contextlib
import json
from enum import StrEnum

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from wire.errors import ErrorCode
from wire.protocol import Error


class ClientCode(StrEnum):
    """Codes of the failures the client finds itself; the worker's are :class:`wire.errors.ErrorCode`."""

    UNREACHABLE = "unreachable"
    LOADING = "loading"
    UNAUTHORIZED = "unauthorized"
    HANDSHAKE_FAILED = "handshake_failed"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    BAD_URL = "bad_url"
    MESSAGE_TOO_BIG = "message_too_big"
    BAD_FRAME = "bad_frame"


class PlaygroundError(Exception):
    """A failure with a stable ``code``, a message for people and whether trying again later can succeed."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    def copy(self) -> PlaygroundError:
        """A fresh instance (one error can end several requests; each raises its own)."""
        return type(self)(self.code, self.message, retryable=self.retryable)


# Exit statuses of the command lines (python -m playground.client, python -m playground.eval).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a renderer this command needs is not installed here (make renderers)
EXIT_RETRY = 75  # EX_TEMPFAIL: the same command may work later (worker busy, down or loading)


def exit_status(exc: PlaygroundError) -> int:
    """A command line's exit status for ``exc``: EXIT_RETRY when trying again later can succeed."""
    return EXIT_RETRY if exc.retryable else EXIT_FAILED


class WorkerError(PlaygroundError):
    """The worker answered with an ``error`` message; ``code`` is its stable code (``busy``, ``invalid_image``…)."""

    session_id: str | None = None
    adapter_path: str | None = None

    @classmethod
    def from_message(cls, message: Error) -> WorkerError:
        error = cls(str(message.code), message.message, retryable=message.retryable)
        error.session_id = message.session_id
        error.adapter_path = message.adapter_path
        return error


class WorkerUnavailable(PlaygroundError):
    """The worker cannot serve the request: down, still loading its model, shutting down, or the connection broke."""


class InvalidRequest(PlaygroundError):
    """The request is not a valid protocol message (refused before sending), or it was too big for the worker."""


class BadFrame(PlaygroundError):
    """The worker sent a frame that is not a valid protocol message."""


def handshake_error(where: str, exc: InvalidStatus) -> WorkerUnavailable:
    status = exc.response.status_code
    reason = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        reason = json.loads(exc.response.body or b"{}").get("error", "")
    if status == 503 and reason == "shutting_down":
        return WorkerUnavailable(ErrorCode.SHUTTING_DOWN, f"{where} is shutting down (HTTP 503)", retryable=True)
    if status == 503:
        return WorkerUnavailable(ClientCode.LOADING,
                                 f"{where} is still loading its model (HTTP 503); retry in a few seconds",
                                 retryable=True)
    if status == 401:
        return WorkerUnavailable(ClientCode.UNAUTHORIZED,
                                 f"{where} refused the token (HTTP 401): set INFERENCE_AUTH_TOKEN")
    return WorkerUnavailable(ClientCode.HANDSHAKE_FAILED, f"{where} refused the WebSocket handshake: HTTP {status}",
                             retryable=status >= 500)


def closed_error(url: str, ws: ClientConnection) -> PlaygroundError:
    code = ws.close_code
    if code == 1009:
        return InvalidRequest(ClientCode.MESSAGE_TOO_BIG, "the worker closed the connection: a request was larger "
                                                          "than its MAX_MESSAGE_BYTES (a smaller image helps)")
    if code == 1001:
        return WorkerUnavailable(ErrorCode.SHUTTING_DOWN, f"the worker at {url} is shutting down", retryable=True)
    detail = f" (close code {code})" if code is not None else ""
    return WorkerUnavailable(ClientCode.DISCONNECTED, f"the connection to the worker at {url} was lost{detail}",
                             retryable=True)
