"""The one error hierarchy of the project, with stable error codes.

Every failure a client can see is a :class:`ServiceError` subclass. Its ``code`` is part of the wire protocol
(``{"type": "error", "code": ...}``) and never changes meaning; ``retryable`` tells a client whether sending the
same request again later can succeed. The adapter store (``adapters/``) raises these too.

    ServiceError
    ├── ProtocolError            invalid_message
    │   ├── InvalidJson          invalid_json
    │   ├── UnknownType          unknown_type
    │   ├── UnsupportedFrame     unsupported_frame
    │   ├── RequestTooLarge      request_too_large      (HTTP: a body over MAX_MESSAGE_BYTES)
    │   └── NotFound             not_found              (HTTP: no such path)
    ├── Unauthorized             unauthorized           (a missing or wrong token)
    ├── InputError               (a request the model or the limits cannot take)
    │   ├── InvalidImage         invalid_image
    │   ├── UnsupportedImage     unsupported_image
    │   ├── ImageTooLarge        image_too_large
    │   ├── ImagesNotSupported   images_not_supported
    │   ├── PromptTooLong        prompt_too_long
    │   ├── InvalidDiagram       invalid_diagram        (a diagram source that cannot be drawn)
    │   └── RendererMissing      renderer_missing       (a diagram kind whose renderer is not installed)
    ├── SessionError             (a session_id this connection cannot use)
    │   ├── DuplicateSession     duplicate_session
    │   ├── UnknownSession       unknown_session
    │   └── TooManySessions      too_many_sessions                             (retryable)
    ├── CapacityError            busy                                          (retryable)
    │   ├── NotReady             not_ready                                     (retryable)
    │   ├── ShuttingDown         shutting_down                                 (retryable)
    │   └── ReplicaFailed        replica_failed                                (retryable)
    ├── DeadlineExceeded         deadline_exceeded                             (retryable)
    ├── AdapterError             adapter_invalid
    │   ├── AdapterNotFound      adapter_not_found
    │   ├── AdapterInvalid       adapter_invalid
    │   ├── AdapterIncompatible  adapter_incompatible
    │   ├── AdapterForbidden     adapter_forbidden
    │   ├── AdapterConflict      adapter_conflict
    │   └── StoreUnavailable     store_unavailable                             (retryable)
    └── InternalError            internal_error

What each code is over HTTP (its status) is :mod:`wire.http`'s. Each code has its own class (:func:`error_class`),
so an error is raised by what it is, never by overriding a code.
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
    NOT_READY = "not_ready"
    UNAUTHORIZED = "unauthorized"
    REQUEST_TOO_LARGE = "request_too_large"
    NOT_FOUND = "not_found"
    INVALID_DIAGRAM = "invalid_diagram"
    RENDERER_MISSING = "renderer_missing"


class ServiceError(Exception):
    """Base of every error a client can be told about.

    ``message`` is what a client is told; ``detail`` (optional) is for the operator only — the server's paths,
    endpoints and low-level causes — and appears in logs and the CLI (``str(exc)``), never on the wire.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" [{self.detail}]" if self.detail else "")


class ProtocolError(ServiceError):
    code = ErrorCode.INVALID_MESSAGE
    message_type: str | None = None  # the type of the refused message, when it was a known one
    session_id: str | None = None  # the refused generate's session_id, when it had a usable one
    request_id: str | None = None  # the refused message's request_id, when it had a usable one
    param: str | None = None  # the request field at fault, when one is (HTTP errors name it)

    def __init__(self, message: str, *, param: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.param = param


class InvalidJson(ProtocolError):
    code = ErrorCode.INVALID_JSON


class UnknownType(ProtocolError):
    code = ErrorCode.UNKNOWN_TYPE


class UnsupportedFrame(ProtocolError):
    code = ErrorCode.UNSUPPORTED_FRAME


class RequestTooLarge(ProtocolError):
    code = ErrorCode.REQUEST_TOO_LARGE


class NotFound(ProtocolError):
    code = ErrorCode.NOT_FOUND


class Unauthorized(ServiceError):
    code = ErrorCode.UNAUTHORIZED


class InputError(ServiceError):
    """A well-formed request that the model or the operator's limits cannot take."""

    code = ErrorCode.INVALID_MESSAGE


class InvalidImage(InputError):
    code = ErrorCode.INVALID_IMAGE


class UnsupportedImage(InputError):
    code = ErrorCode.UNSUPPORTED_IMAGE


class ImageTooLarge(InputError):
    code = ErrorCode.IMAGE_TOO_LARGE


class ImagesNotSupported(InputError):
    code = ErrorCode.IMAGES_NOT_SUPPORTED


class PromptTooLong(InputError):
    code = ErrorCode.PROMPT_TOO_LONG


class InvalidDiagram(InputError):
    code = ErrorCode.INVALID_DIAGRAM


class RendererMissing(InputError):
    code = ErrorCode.RENDERER_MISSING


class SessionError(ServiceError):
    code = ErrorCode.UNKNOWN_SESSION


class DuplicateSession(SessionError):
    code = ErrorCode.DUPLICATE_SESSION


class UnknownSession(SessionError):
    code = ErrorCode.UNKNOWN_SESSION


class TooManySessions(SessionError):
    code = ErrorCode.TOO_MANY_SESSIONS
    retryable = True


class CapacityError(ServiceError):
    code = ErrorCode.BUSY
    retryable = True


class NotReady(CapacityError):
    code = ErrorCode.NOT_READY


class ShuttingDown(CapacityError):
    code = ErrorCode.SHUTTING_DOWN


class ReplicaFailed(CapacityError):
    code = ErrorCode.REPLICA_FAILED


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


def _classes(base: type[ServiceError]) -> list[type[ServiceError]]:
    return [base, *(c for sub in base.__subclasses__() for c in _classes(sub))]


# The class of each code: the most specific class whose own code it is (a base class names its default code too,
# e.g. CapacityError is busy, AdapterError and AdapterInvalid are both adapter_invalid: the leaf wins).
_BY_CODE: dict[ErrorCode, type[ServiceError]] = {}
for _cls in _classes(ServiceError):
    if _cls.code not in _BY_CODE or issubclass(_cls, _BY_CODE[_cls.code]):
        _BY_CODE[_cls.code] = _cls


def error_class(code: ErrorCode | str) -> type[ServiceError]:
    """The class that stands for ``code`` (e.g. ``busy`` → :class:`CapacityError`)."""
    return _BY_CODE[ErrorCode(code)]
