"""Diagram sources in, pictures out: BPMN, Mermaid, Graphviz, PlantUML and SVG files rendered as PNG for the model.

    from diagrams import render
    rendered = render(open("process.bpmn", "rb").read(), name="process.bpmn")
    rendered.png, rendered.kind, rendered.renderer, rendered.width, rendered.height

Real renderers: bpmn-js and mermaid in headless Chromium (:mod:`diagrams.chromium`), Graphviz's ``dot``
(:mod:`diagrams.graphviz`) and PlantUML in its sandbox (:mod:`diagrams.plantuml`); every drawing is SVG, checked
(:mod:`diagrams.xml`) and rasterised by Chromium (:mod:`diagrams.render`). Every limit is in
:class:`~diagrams.settings.DiagramSettings`; every failure is a :class:`~diagrams.errors.DiagramError` naming the
kind and the reason. This package imports nothing of the worker's: the playground and its client use it.
"""

from .errors import DiagramError, RendererMissing
from .kinds import SUFFIXES, Kind, describe_kinds, kind_of
from .render import DiagramRenderer, Rendered, default_renderer, render, render_async
from .settings import DiagramSettings

__all__ = ["SUFFIXES", "DiagramError", "DiagramRenderer", "DiagramSettings", "Kind", "Rendered", "RendererMissing",
           "default_renderer", "describe_kinds", "kind_of", "render", "render_async"]
