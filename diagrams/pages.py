"""What runs in a Chromium page: bpmn-js and mermaid drawing SVG, and the rasteriser that turns any SVG into a PNG.

The libraries are the npm packages' browser bundles (``make renderers``), read from disk here once and put into each
fresh page as a script's text: the page fetches nothing.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

from .errors import InvalidSource, RenderFailed
from .kinds import Kind

BUNDLES = {Kind.BPMN: ("bpmn-js", "dist/bpmn-viewer.production.min.js"),
           Kind.MERMAID: ("mermaid", "dist/mermaid.min.js")}
INSTALL = "make renderers (npm ci in diagrams/)"
SHELL = ("<!doctype html><html><head><meta charset='utf-8'></head>"
         "<body style='margin:0'><div id='canvas' style='width:1600px;height:1200px'></div></body></html>")

BPMN_SCRIPT = """async (source) => {
  const viewer = new BpmnJS({container: '#canvas'});
  try {
    const result = await viewer.importXML(source);
    const {svg} = await viewer.saveSVG();
    return {svg, warnings: result.warnings.map(w => String(w.message))};
  } catch (e) {
    return {error: String(e.message || e), warnings: (e.warnings || []).map(w => String(w.message))};
  }
}"""

MERMAID_SCRIPT = """async ([source, config]) => {
  mermaid.initialize(config);
  try {
    await mermaid.parse(source);
    const {svg} = await mermaid.render('diagram', source);
    // mermaid writes HTML-flavoured SVG (<br>, &nbsp;, xlink: without its declaration): read it as HTML in an inert
    // document (nothing loads) and write it back as XML
    const node = new DOMParser().parseFromString(svg, 'text/html').querySelector('svg');
    if (!node) return {error: 'mermaid drew no SVG'};
    return {svg: new XMLSerializer().serializeToString(node)};
  } catch (e) {
    const loc = e.hash && e.hash.loc;
    const line = loc ? loc.first_line : (e.hash && Number.isInteger(e.hash.line) ? e.hash.line + 1 : null);
    return {error: String(e.message || e), line};
  }
}"""


def bundle_path(node_modules: Path, kind: Kind) -> Path:
    package, file = BUNDLES[kind]
    return node_modules / package / file


@functools.cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def package_version(node_modules: Path, package: str) -> str:
    try:
        return str(json.loads((node_modules / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def bpmn_job(node_modules: Path, source: str) -> Any:
    async def job(page: Any) -> str:
        await page.set_content(SHELL)
        await page.add_script_tag(content=_read(bundle_path(node_modules, Kind.BPMN)))
        result = await page.evaluate(BPMN_SCRIPT, source)
        if "error" in result:
            raise InvalidSource(Kind.BPMN, f"bpmn-js cannot draw it: {result['error'][:300]}")
        return str(result["svg"])

    return job


def mermaid_config(max_source_bytes: int, max_edges: int) -> dict[str, Any]:
    return {"startOnLoad": False, "securityLevel": "strict", "maxTextSize": max_source_bytes, "maxEdges": max_edges,
            "deterministicIds": True, "fontFamily": "Arial, Helvetica, sans-serif", "theme": "default"}


def mermaid_job(node_modules: Path, source: str, config: dict[str, Any]) -> Any:
    async def job(page: Any) -> str:
        await page.set_content(SHELL)
        await page.add_script_tag(content=_read(bundle_path(node_modules, Kind.MERMAID)))
        result = await page.evaluate(MERMAID_SCRIPT, [source, config])
        if "error" in result:
            message = " ".join(result["error"].split())
            if "No diagram type detected" in message:
                first = next((line.strip() for line in source.splitlines() if line.strip()), "")
                raise InvalidSource(Kind.MERMAID, f"unknown diagram type {first[:60]!r}", line=1)
            raise InvalidSource(Kind.MERMAID, f"syntax error: {message[:300]}", line=result.get("line"))
        return str(result["svg"])

    return job


def rasterise_job(svg: bytes, width: int, height: int) -> Any:
    """A PNG of ``width`` × ``height`` pixels of the SVG, on white (the page runs no script)."""
    url = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    html = (f"<!doctype html><html><body style='margin:0;background:#fff'><img id='diagram' alt='' src='{url}' "
            f"width='{width}' height='{height}' style='display:block'></body></html>")

    async def job(page: Any) -> bytes:
        await page.set_content(html, wait_until="load")
        loaded = await page.evaluate("() => { const i = document.getElementById('diagram');"
                                     " return i.complete && i.naturalWidth > 0; }")
        if not loaded:
            raise RenderFailed(None, "Chromium could not draw the SVG")
        png: bytes = await page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": height},
                                           type="png", animations="disabled")
        return png

    return job
