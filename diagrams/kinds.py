"""The kinds of diagram source, told by file name (or declared), and how each is rendered."""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePosixPath


class Kind(StrEnum):
    BPMN = "bpmn"
    MERMAID = "mermaid"
    GRAPHVIZ = "graphviz"
    PLANTUML = "plantuml"
    SVG = "svg"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {Kind.BPMN: "BPMN", Kind.MERMAID: "Mermaid", Kind.GRAPHVIZ: "Graphviz", Kind.PLANTUML: "PlantUML",
           Kind.SVG: "SVG"}

SUFFIXES: dict[str, Kind] = {
    ".bpmn": Kind.BPMN,
    ".mmd": Kind.MERMAID,
    ".mermaid": Kind.MERMAID,
    ".dot": Kind.GRAPHVIZ,
    ".gv": Kind.GRAPHVIZ,
    ".puml": Kind.PLANTUML,
    ".plantuml": Kind.PLANTUML,
    ".svg": Kind.SVG,
}

# What renders each kind: the program that draws it, then Chromium, which rasterises every SVG.
RENDERED_BY = {Kind.BPMN: "bpmn-js in Chromium", Kind.MERMAID: "mermaid in Chromium",
               Kind.GRAPHVIZ: "Graphviz dot, then Chromium", Kind.PLANTUML: "PlantUML (Java), then Chromium",
               Kind.SVG: "Chromium"}


def kind_of(name: str | None, declared: Kind | str | None = None) -> Kind | None:
    """The declared kind (a :class:`Kind` or its value), else the one the file name's suffix says; None: neither."""
    if declared is not None:
        try:
            return Kind(declared)
        except ValueError:
            return None
    if not name:
        return None
    return SUFFIXES.get(PurePosixPath(name).suffix.casefold())


def describe_kinds() -> str:
    """``BPMN (.bpmn), Mermaid (.mmd, .mermaid), …`` for help texts."""
    by_kind: dict[Kind, list[str]] = {}
    for suffix, kind in SUFFIXES.items():
        by_kind.setdefault(kind, []).append(suffix)
    return ", ".join(f"{kind.label} ({', '.join(suffixes)})" for kind, suffixes in by_kind.items())
