"""Every limit and every path of the diagram renderers, in one settings object (environment: ``DIAGRAM_*``).

| variable | default | meaning |
|---|---|---|
| ``DIAGRAM_MAX_SOURCE_BYTES`` | ``1048576`` | size of a diagram source (1 MiB); more is refused unread |
| ``DIAGRAM_MAX_XML_ELEMENTS`` | ``50000`` | elements of a BPMN or SVG document (and of any renderer's SVG) |
| ``DIAGRAM_MAX_SVG_BYTES`` | ``16777216`` | size of the SVG a renderer produces (16 MiB) |
| ``DIAGRAM_TIMEOUT_S`` | ``20`` | one render, rasterising included; then its process is killed or its page closed |
| ``DIAGRAM_SCALE`` | ``2.0`` | pixels per CSS pixel of the diagram's own size (2: as sharp as a HiDPI screen) |
| ``DIAGRAM_MAX_PIXELS`` | ``8000000`` | width × height of the PNG; a larger picture is scaled down to fit … |
| ``DIAGRAM_MAX_SIDE`` | ``8000`` | … and so is one wider or taller than this … |
| ``DIAGRAM_MIN_SCALE`` | ``0.25`` | … unless that takes it below this fraction of its own size: then it is refused |
| ``DIAGRAM_MERMAID_MAX_EDGES`` | ``500`` | edges of a Mermaid diagram (Mermaid's own ``maxEdges``) |
| ``DIAGRAM_MAX_CONCURRENT`` | ``2`` | renders at once, any renderer (more wait for a turn, within their time limit) |
| ``DIAGRAM_JAVA_MAX_HEAP_MB`` | ``512`` | PlantUML's Java heap |
| ``DIAGRAM_DOT_MAX_MEMORY_MB`` | ``1024`` | address space of a ``dot`` process (PlantUML's too) |
| ``DIAGRAM_CHROMIUM_PATH`` | ``/usr/bin/chromium`` | Debian's Chromium (bpmn-js, Mermaid, and rasterising every SVG) |
| ``DIAGRAM_DOT_PATH`` | ``dot`` | Graphviz's ``dot`` (a name on ``PATH`` or a path) |
| ``DIAGRAM_JAVA_PATH`` | ``java`` | the Java runtime PlantUML runs on |
| ``DIAGRAM_NODE_MODULES`` | ``diagrams/node_modules`` | bpmn-js, mermaid and the PlantUML jar (``make renderers``) |
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


class DiagramSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIAGRAM_", extra="ignore")

    max_source_bytes: int = Field(1024 * 1024, ge=1)
    max_xml_elements: int = Field(50_000, ge=1)
    max_svg_bytes: int = Field(16 * 1024 * 1024, ge=1)
    timeout_s: float = Field(20.0, gt=0)
    scale: float = Field(2.0, gt=0, le=8)
    max_pixels: int = Field(8_000_000, ge=1)
    max_side: int = Field(8000, ge=1, le=16384)  # Chromium's largest screenshot is 16384 px a side
    min_scale: float = Field(0.25, gt=0, le=1)
    mermaid_max_edges: int = Field(500, ge=1)
    max_concurrent: int = Field(2, ge=1)
    java_max_heap_mb: int = Field(512, ge=64)
    dot_max_memory_mb: int = Field(1024, ge=64)
    chromium_path: Path = Path("/usr/bin/chromium")
    dot_path: str = "dot"
    java_path: str = "java"
    node_modules: Path = PACKAGE_DIR / "node_modules"
