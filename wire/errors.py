"""The one error hierarchy of the project, with stable error codes.

Every failure a client can see is a :class:`ServiceError` subclass. Its ``code`` is part of the wire protocol
(``{"type": "error", "code": ...}``) and never changes meaning; ``retryable`` tells a client whether sending the
same request again later can succeed. The adapter store (``adapters/``) raises these too.

    ServiceError
    ├── ProtocolError            invalid_json, invalid_message, unknown_type, unsupported_frame
    ├── InputError               invalid_image, unsupported_image, image_too_large, images_not_supported,
    │                            prompt_too_long
    ├── SessionError             duplicate_session, unknown_session, too_many_sessions
    ├── CapacityError            busy, shutting_down, replica_failed         (retryable)
    ├── DeadlineExceeded         deadline_exceeded                             (retryable)
    ├── AdapterError             adapter_not_found, adapter_invalid, adapter_incompatible,
    │   │                        adapter_forbidden, adapter_conflict
    │   └── StoreUnavailable     store_unavailable                             (retryable)
    └── InternalError            internal_error
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error codes sent in ``error`` messages. Add new ones; never rename or reuse one."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_FRAME = "unsupported_frame"
    INVALID_IMAGE = "invalid_image"
    UNSUPPORTED_IMAGE = "unsupported_image"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGES_NOT_SUPPORTED = "images_not_supported"
    PROMPT_TOO_LONG = "prompt_too_long"
    DUPLICATE_SESSION = "duplicate_session"
    UNKNOWN_SESSION = "unknown_session"
    TOO_MANY_SESSIONS = "too_many_sessions"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    REPLICA_FAILED = "replica_failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    ADAPTER_NOT_FOUND = "adapter_not_found"
    ADAPTER_INVALID = "adapter_invalid"
    ADAPTER_INCOMPATIBLE = "adapter_incompatible"
    ADAPTER_FORBIDDEN = "adapter_forbidden"
    ADAPTER_CONFLICT = "adapter_conflict"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"


class ServiceError(Exception):
    """Base of every error a client can be told about.

    ``message`` is what a client is told; ``detail`` (optional) is for the operator only — the server's paths,
    endpoints and low-level causes — and appears in logs and the CLI (``str(exc)``), never on the wire.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None, retryable: bool | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" [{self.detail}]" if self.detail else "")


class ProtocolError(ServiceError):
    code = ErrorCode.INVALID_MESSAGE
    message_type: str | None = None  # the type of the refused message, when it was a known one
    session_id: str | None = None  # the refused generate's session_id, when it had a usable one
    request_id: str | None = None  # the refused message's request_id, when it had a usable one


class InputError(ServiceError):
    code = ErrorCode.INVALID_MESSAGE


class SessionError(ServiceError):
    code = ErrorCode.UNKNOWN_SESSION


class CapacityError(ServiceError):
    code = ErrorCode.BUSY
    retryable = True


class DeadlineExceeded(ServiceError):
    code = ErrorCode.DEADLINE_EXCEEDED
    retryable = True


class AdapterError(ServiceError):
    code = ErrorCode.ADAPTER_INVALID


class AdapterNotFound(AdapterError):
    code = ErrorCode.ADAPTER_NOT_FOUND


class AdapterInvalid(AdapterError):
    code = ErrorCode.ADAPTER_INVALID


class AdapterConflict(AdapterError):
    code = ErrorCode.ADAPTER_CONFLICT


class AdapterForbidden(AdapterError):
    code = ErrorCode.ADAPTER_FORBIDDEN


class AdapterIncompatible(AdapterError):
    code = ErrorCode.ADAPTER_INCOMPATIBLE


class StoreUnavailable(AdapterError):
    code = ErrorCode.STORE_UNAVAILABLE
    retryable = True


class InternalError(ServiceError):
    code = ErrorCode.INTERNAL_ERROR
