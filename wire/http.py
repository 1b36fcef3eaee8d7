"""The error codes over HTTP: each code's status, and the error body every HTTP route answers with (pure, no I/O).

One body for every route, in OpenAI's shape so that its SDKs raise the right exception, with the stable code of
:mod:`wire.errors` and the original service's ``detail`` beside it (its clients read that)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "invalid_message",
               "retryable": false},
     "detail": "..."}

``Retry-After`` (seconds) comes with every retryable refusal (429, 503).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .errors import ErrorCode, ProtocolError, ServiceError

STATUS: dict[ErrorCode, HTTPStatus] = {
    ErrorCode.INVALID_JSON: HTTPStatus.BAD_REQUEST,
    ErrorCode.INVALID_MESSAGE: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNKNOWN_TYPE: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNSUPPORTED_FRAME: HTTPStatus.BAD_REQUEST,
    ErrorCode.REQUEST_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.INVALID_IMAGE: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNSUPPORTED_IMAGE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.IMAGE_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.IMAGES_NOT_SUPPORTED: HTTPStatus.BAD_REQUEST,
    ErrorCode.PROMPT_TOO_LONG: HTTPStatus.BAD_REQUEST,
    ErrorCode.INVALID_DIAGRAM: HTTPStatus.BAD_REQUEST,
    ErrorCode.RENDERER_MISSING: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.DUPLICATE_SESSION: HTTPStatus.CONFLICT,
    ErrorCode.UNKNOWN_SESSION: HTTPStatus.NOT_FOUND,
    ErrorCode.TOO_MANY_SESSIONS: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.BUSY: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.NOT_READY: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.SHUTTING_DOWN: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.REPLICA_FAILED: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.ADAPTER_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.ADAPTER_INVALID: HTTPStatus.BAD_REQUEST,
    ErrorCode.ADAPTER_INCOMPATIBLE: HTTPStatus.BAD_REQUEST,
    ErrorCode.ADAPTER_FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.ADAPTER_CONFLICT: HTTPStatus.CONFLICT,
    ErrorCode.STORE_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
}
RETRY_AFTER_S = 1  # what a retryable refusal suggests: admission changes as soon as one request ends


def status_of(error: ServiceError) -> HTTPStatus:
    return STATUS[error.code]


def _type(status: int) -> str:
    """OpenAI's error ``type`` for a status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(error: ServiceError, status: int | None = None) -> dict[str, Any]:
    """The JSON body of an error reply (the client's ``message`` only: never the operator's ``detail``)."""
    status = status or status_of(error)
    param = error.param if isinstance(error, ProtocolError) else None
    return {
        "error": {"message": error.message, "type": _type(status), "param": param, "code": str(error.code),
                  "retryable": error.retryable},
        "detail": error.message,
    }


def error_headers(error: ServiceError, status: int | None = None) -> dict[str, str]:
    status = status or status_of(error)
    headers = {"Cache-Control": "no-store"}
    if error.retryable and status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers
