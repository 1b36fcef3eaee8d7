"""Diagram source → PNG: the checks every kind goes through, the renderer of each kind, one rasteriser for all.

    source bytes ─▶ size limit ─▶ kind ─▶ bpmn-js / mermaid (Chromium page) ─┐
                                        ─▶ dot / PlantUML (process)         ─┼─▶ SVG checked ─▶ Chromium ─▶ PNG
                                        ─▶ SVG as it is                     ─┘   (XML, no outside references,
                                                                                   size → pixel limit)

Every renderer draws SVG; one Chromium page rasterises it at ``DIAGRAM_SCALE``, scaled down to fit
``DIAGRAM_MAX_PIXELS`` and ``DIAGRAM_MAX_SIDE``. ``render`` blocks: async callers use :func:`render_async`.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import graphviz, pages, plantuml, process
from . import xml as safe_xml
from .chromium import BrowserUnavailable, Chromium
from .errors import (
    DiagramError,
    ForbiddenSource,
    InvalidSource,
    OutputTooLarge,
    RendererMissing,
    RenderFailed,
    RenderTimeout,
    SourceTooLarge,
    UnknownKind,
)
from .kinds import Kind, describe_kinds, kind_of
from .settings import DiagramSettings

log = logging.getLogger(__name__)

BPMN_MODEL = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMN_DI = "http://www.omg.org/spec/BPMN/20100524/DI"
INSTALL_CHROMIUM = "apt-get install chromium (or: make renderers)"


@dataclass(frozen=True)
class Rendered:
    """A diagram drawn as a PNG, and the facts about it."""

    png: bytes
    kind: Kind
    renderer: str  # the program that drew it and its version, e.g. "bpmn-js 18.31.1"
    width: int  # of the PNG
    height: int
    source_sha256: str
    source_bytes: int
    svg: bytes = field(repr=False)  # what the renderer drew, before rasterising
    elapsed_ms: float = 0.0
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"{self.kind.label} drawn by {self.renderer}, {self.width}×{self.height} px, "
                f"in {self.elapsed_ms:.0f} ms")


class DiagramRenderer:
    """Renders diagram sources; holds the process's Chromium (started on first use). Thread-safe."""

    def __init__(self, settings: DiagramSettings | None = None) -> None:
        self.settings = settings or DiagramSettings()
        self.chromium = Chromium(self.settings.chromium_path, self.settings.max_concurrent)
        # one turn per render, whatever its renderer (Chromium, dot, PlantUML's Java): DIAGRAM_MAX_CONCURRENT
        self._turns = threading.BoundedSemaphore(self.settings.max_concurrent)

    def close(self) -> None:
        self.chromium.close()

    def __enter__(self) -> DiagramRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what is installed -----------------------------------------------------------------------------------
    def missing(self, kind: Kind) -> str | None:
        """What this kind needs and is not installed here, with how to install it; None when it can be rendered."""
        s = self.settings
        needs = []
        if kind in pages.BUNDLES and not pages.bundle_path(s.node_modules, kind).is_file():
            needs.append(f"{pages.BUNDLES[kind][0]} ({pages.INSTALL})")
        if kind is Kind.GRAPHVIZ and graphviz.find(s) is None:
            needs.append(f"Graphviz's dot ({graphviz.INSTALL})")
        if kind is Kind.PLANTUML:
            if plantuml.find_java(s) is None:
                needs.append(f"Java ({plantuml.INSTALL_JAVA})")
            if plantuml.find_jar(s) is None:
                needs.append(f"the PlantUML jar ({plantuml.INSTALL_JAR})")
        if not s.chromium_path.exists():
            needs.append(f"Chromium at {s.chromium_path} ({INSTALL_CHROMIUM})")
        return "not installed: " + "; ".join(needs) if needs else None

    def available(self) -> dict[Kind, str | None]:
        """Every kind → None (it can be rendered) or what is missing."""
        return {kind: self.missing(kind) for kind in Kind}

    def renderer_name(self, kind: Kind) -> str:
        s = self.settings
        if kind in pages.BUNDLES:
            package = pages.BUNDLES[kind][0]
            return f"{package} {pages.package_version(s.node_modules, package)}"
        if kind is Kind.GRAPHVIZ:
            dot = graphviz.find(s)
            return f"Graphviz dot {graphviz.version(dot) if dot else '(missing)'}"
        if kind is Kind.PLANTUML:
            jar, java = plantuml.find_jar(s), plantuml.find_java(s)
            return (f"PlantUML {plantuml.version(jar) if jar else '(missing)'} on Java "
                    f"{plantuml.java_version(java) if java else '(missing)'}")
        return f"Chromium {self.chromium.version or ''}".rstrip()

    # ---- rendering -------------------------------------------------------------------------------------------
    def render(self, source: bytes, *, name: str | None = None, kind: Kind | str | None = None) -> Rendered:
        """Draw ``source`` (its kind declared, or told by ``name``'s suffix) as a PNG; :class:`DiagramError` if not."""
        started = time.monotonic()
        found = kind_of(name, kind)
        if found is None:
            shown = name if name is None or len(name) <= 80 else name[:80] + "…"
            raise UnknownKind(None, f"{shown!r} is not a diagram source this playground can draw; it takes "
                                    f"{describe_kinds()}")
        if not self._turns.acquire(timeout=self.settings.timeout_s):
            raise RenderTimeout(found, f"no turn to render within {self.settings.timeout_s:g} s (DIAGRAM_TIMEOUT_S): "
                                       f"{self.settings.max_concurrent} renders at once (DIAGRAM_MAX_CONCURRENT) "
                                       f"are running")
        try:
            return self._render(found, source, started)
        except DiagramError:
            raise
        except Exception as exc:  # a defect, never a traceback for the user: the log has it
            log.exception("rendering a %s source failed", found.label)
            raise RenderFailed(found, f"unexpected {type(exc).__name__} while rendering") from None
        finally:
            self._turns.release()

    def _render(self, found: Kind, source: bytes, started: float) -> Rendered:
        s = self.settings
        if len(source) > s.max_source_bytes:
            raise SourceTooLarge(found, f"the source is {len(source)} bytes, more than {s.max_source_bytes} "
                                        f"(DIAGRAM_MAX_SOURCE_BYTES)")
        missing = self.missing(found)
        if missing is not None:
            raise RendererMissing(found, missing)
        deadline = started + s.timeout_s
        warnings: list[str] = []
        svg = self._draw(found, source, deadline, warnings)
        if len(svg) > s.max_svg_bytes:
            raise OutputTooLarge(found, f"the drawing is {len(svg)} bytes of SVG, more than {s.max_svg_bytes} "
                                        f"(DIAGRAM_MAX_SVG_BYTES)")
        try:
            root = safe_xml.parse(found, svg, s.max_xml_elements)
        except (InvalidSource, ForbiddenSource) as exc:
            if found is Kind.SVG:
                raise  # the user's own SVG
            raise RenderFailed(found, f"{self.renderer_name(found)} drew SVG that cannot be read: {exc.message}") \
                from None
        outside = safe_xml.external_reference(root)
        if outside is not None:
            raise InvalidSource(found, f"the drawing refers to something outside it, which is not loaded: {outside}")
        width, height = self._pixels(found, *safe_xml.svg_size(found, root))
        png = self._browser(found, pages.rasterise_job(svg, width, height), deadline, javascript=False,
                            viewport=(width, height))
        with Image.open(io.BytesIO(png)) as image:
            size = image.size
        if size[0] * size[1] > s.max_pixels or max(size) > s.max_side:  # the page must have kept to the size
            raise RenderFailed(found, f"the picture came out {size[0]}×{size[1]} px, over the pixel limit")
        return Rendered(png=png, kind=found, renderer=self.renderer_name(found), width=size[0], height=size[1],
                        source_sha256=hashlib.sha256(source).hexdigest(), source_bytes=len(source), svg=svg,
                        elapsed_ms=round((time.monotonic() - started) * 1000, 1), warnings=tuple(warnings))

    def _draw(self, kind: Kind, source: bytes, deadline: float, warnings: list[str]) -> bytes:
        s = self.settings
        if kind is Kind.SVG:
            return source
        if kind is Kind.GRAPHVIZ:
            return graphviz.to_svg(source, s, self._left(kind, deadline))
        if kind is Kind.PLANTUML:
            return plantuml.to_svg(source, s, self._left(kind, deadline), graphviz.find(s))
        text = _text(kind, source)
        if kind is Kind.BPMN:
            check_bpmn(source, s.max_xml_elements)
            job = pages.bpmn_job(s.node_modules, text)
        else:
            job = pages.mermaid_job(s.node_modules, text, pages.mermaid_config(s.max_source_bytes,
                                                                              s.mermaid_max_edges))
        drawn: str = self._browser(kind, job, deadline, javascript=True, viewport=(1600, 1200))
        return drawn.encode("utf-8")

    def _left(self, kind: Kind, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RenderTimeout(kind, process.timeout_message(self.settings.timeout_s))
        return left

    def _browser(self, kind: Kind, job: Any, deadline: float, *, javascript: bool, viewport: tuple[int, int]) -> Any:
        timeout_s = self._left(kind, deadline)
        try:
            return self.chromium.run(job, timeout_s=timeout_s, javascript=javascript, viewport=viewport)
        except TimeoutError:
            raise RenderTimeout(kind, process.timeout_message(self.settings.timeout_s)) from None
        except BrowserUnavailable as exc:
            raise RendererMissing(kind, f"{exc} ({INSTALL_CHROMIUM})") from None
        except DiagramError as exc:
            if exc.kind is None:
                exc.kind = kind
            raise
        except Exception as exc:  # Playwright's own errors: a crashed page, a closed browser
            raise RenderFailed(kind, f"Chromium failed: {' '.join(str(exc).split())[:300]}") from None

    def _pixels(self, kind: Kind, width: float, height: float) -> tuple[int, int]:
        """The PNG's size: the drawing's own size × DIAGRAM_SCALE, scaled down to the limits if need be."""
        s = self.settings
        w, h = width * s.scale, height * s.scale
        fit = min(1.0, math.sqrt(s.max_pixels / w / h), s.max_side / w, s.max_side / h)
        if fit * s.scale < s.min_scale:
            raise OutputTooLarge(kind, f"the drawing is {_px(width)}×{_px(height)} px: it would have to shrink to "
                                       f"{fit * s.scale:.0%} of its size to fit {s.max_pixels} pixels and "
                                       f"{s.max_side} px a side (DIAGRAM_MAX_PIXELS, DIAGRAM_MAX_SIDE)")
        return max(1, math.floor(w * fit)), max(1, math.floor(h * fit))


def _px(value: float) -> str:
    """A size for a message: whole pixels, or three digits when it is absurd (1e308 has 309 of them)."""
    return f"{value:.0f}" if value < 1e9 else f"{value:.3g}"


def _text(kind: Kind, source: bytes) -> str:
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidSource(kind, f"the source is not UTF-8 text (byte {exc.start})") from None


def check_bpmn(source: bytes, max_elements: int) -> None:
    """BPMN 2.0 XML with its diagram interchange (the layout bpmn-js draws), or a clear error."""
    root = safe_xml.parse(Kind.BPMN, source, max_elements)
    if root.tag != f"{{{BPMN_MODEL}}}definitions":
        raise InvalidSource(Kind.BPMN, f"not BPMN 2.0 XML: the root element is <{safe_xml.local_name(root)}>, "
                                       f"not <definitions> in the BPMN 2.0 model namespace")
    shapes = root.findall(f".//{{{BPMN_DI}}}BPMNDiagram/{{{BPMN_DI}}}BPMNPlane/*")
    if not shapes:
        raise InvalidSource(Kind.BPMN, "no diagram layout (BPMN DI) in the file: save it from a modeler that keeps "
                                       "the layout (Camunda Modeler, bpmn.io)")


# ---- the process's renderer ----------------------------------------------------------------------------------------
_default: DiagramRenderer | None = None
_default_lock = threading.Lock()


def default_renderer() -> DiagramRenderer:
    """The process's renderer, with settings from the environment (one Chromium for the whole process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = DiagramRenderer()
            atexit.register(_default.close)
        return _default


def render(source: bytes, *, name: str | None = None, kind: Kind | str | None = None,
           renderer: DiagramRenderer | None = None) -> Rendered:
    """Blocking: see :meth:`DiagramRenderer.render`."""
    return (renderer or default_renderer()).render(source, name=name, kind=kind)


async def render_async(source: bytes, *, name: str | None = None, kind: Kind | str | None = None,
                       renderer: DiagramRenderer | None = None) -> Rendered:
    """The same, on a thread: an event loop never waits for a renderer."""
    return await asyncio.to_thread(render, source, name=name, kind=kind, renderer=renderer)
