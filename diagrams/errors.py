"""Why a diagram was not rendered. Every error names the kind of diagram and the reason, in one line.

    DiagramError                 kind, code, message (str(): "BPMN: malformed XML: … (line 3)")
    ├── UnknownKind              unknown_kind      not a diagram source this package knows
    ├── SourceTooLarge           too_large         over DIAGRAM_MAX_SOURCE_BYTES (or too many XML elements)
    ├── InvalidSource            invalid           malformed XML, no diagram layout, a syntax error (with its line)
    ├── ForbiddenSource          forbidden         it would read a file or a URL, or it declares XML entities
    ├── RenderTimeout            timeout           the renderer ran past DIAGRAM_TIMEOUT_S (and was stopped)
    ├── OutputTooLarge           output_too_large  the picture would be over DIAGRAM_MAX_PIXELS even scaled down
    ├── RendererMissing          not_installed     a renderer is not installed: the message says how to install it
    └── RenderFailed             failed            the renderer broke (a crash, an unexpected answer)
"""

from __future__ import annotations

from .kinds import Kind


class DiagramError(Exception):
    code = "failed"

    def __init__(self, kind: Kind | None, message: str, *, line: int | None = None) -> None:
        self.kind = kind
        self.message = message
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.kind.label if self.kind else 'Diagram'}: {self.message}{where}"


class UnknownKind(DiagramError):
    code = "unknown_kind"


class SourceTooLarge(DiagramError):
    code = "too_large"


class InvalidSource(DiagramError):
    code = "invalid"


class ForbiddenSource(DiagramError):
    code = "forbidden"


class RenderTimeout(DiagramError):
    code = "timeout"


class OutputTooLarge(DiagramError):
    code = "output_too_large"


class RendererMissing(DiagramError):
    code = "not_installed"


class RenderFailed(DiagramError):
    code = "failed"
