"""XML read safely (BPMN sources, SVG sources, every renderer's SVG), and what an SVG may refer to. Pure.

lxml's parser here resolves no entities, loads no DTD, reads nothing from the network and keeps libxml2's limits on
huge documents; a document whose DTD declares entities is refused outright (an entity-expansion bomb, such as the
billion laughs, needs them; neither BPMN nor SVG files do).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lxml import etree

from .errors import ForbiddenSource, InvalidSource, SourceTooLarge
from .kinds import Kind

ENTITIES = "the XML declares entities: refused (entity-expansion bombs need them)"
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_URL = re.compile(r"url\(\s*['\"]?([^'\")]*)", re.IGNORECASE)
_IMPORT = re.compile(r"@import", re.IGNORECASE)
# Units of an SVG length, in CSS pixels.
_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4, "em": 16.0,
          "ex": 8.0}
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z%]*)\s*$")


def parse(kind: Kind, data: bytes, max_elements: int) -> Any:
    """The root element of an XML document, or a clear error: malformed, entities declared, too many elements."""
    if b"<!ENTITY" in data:  # refused before parsing: libxml2 expands entities in attribute values all the same
        raise ForbiddenSource(kind, ENTITIES)
    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False,
                             remove_comments=True, remove_pis=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        if "amplification" in exc.msg or "entit" in exc.msg.lower():  # an encoding the scan above did not read
            raise ForbiddenSource(kind, ENTITIES) from None
        raise InvalidSource(kind, f"malformed XML: {exc.msg}", line=exc.lineno) from None
    if root is None:
        raise InvalidSource(kind, "no XML document")
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise ForbiddenSource(kind, ENTITIES)
    for count, _ in enumerate(root.iter(), start=1):
        if count > max_elements:
            raise SourceTooLarge(kind, f"more than {max_elements} XML elements (DIAGRAM_MAX_XML_ELEMENTS)")
    return root


def local_name(element: Any) -> str:
    tag = element.tag
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def external_reference(root: Any) -> str | None:
    """The first reference of an SVG to something outside itself (a file, a URL), or None.

    Links (``<a href>``) are not loaded and stay; references to the document itself (``#id``) and ``data:`` URLs are
    fine. Everything else that a browser would fetch — ``<image href>``, ``<use href>``, ``<feImage>``, ``url(…)`` in
    styles, ``@import``, ``src`` of embedded HTML, an ``xml-stylesheet`` — is reported.
    """

    def outside(value: str) -> bool:
        value = value.strip()
        return bool(value) and not value.startswith("#") and not value.lower().startswith("data:")

    for node in root.iter():
        if isinstance(node, etree._ProcessingInstruction):
            if node.target == "xml-stylesheet":
                return f"<?xml-stylesheet {(node.text or '')[:80]}?>"
            continue
        if not isinstance(node.tag, str):
            continue
        name = local_name(node)
        for attr, value in node.attrib.items():
            attr_name = etree.QName(attr).localname
            if attr_name in ("href", "src") and name != "a" and outside(value):
                return f"<{name} {attr_name}=\"{value[:80]}\">"
            if "url(" in value.lower():
                for url in _URL.findall(value):
                    if outside(url):
                        return f"url({url[:80]})"
        if name == "style" and node.text:
            if _IMPORT.search(node.text):
                return "@import in a <style>"
            for url in _URL.findall(node.text):
                if outside(url):
                    return f"url({url[:80]})"
    for pi in root.itersiblings(preceding=True):
        if isinstance(pi, etree._ProcessingInstruction) and pi.target == "xml-stylesheet":
            return f"<?xml-stylesheet {(pi.text or '')[:80]}?>"
    return None


def _length(value: str | None) -> float | None:
    if not value:
        return None
    found = _LENGTH.match(value)
    if not found or found.group(2) not in _UNITS:
        return None  # percentages and unknown units: the viewBox says more
    return float(found.group(1)) * _UNITS[found.group(2)]


def svg_size(kind: Kind, root: Any) -> tuple[float, float]:
    """The SVG's own size in CSS pixels: its width and height, else its viewBox's (keeping the aspect ratio); at
    least a pixel a side and finite, or a clear error."""
    width, height = _svg_size(kind, root)
    if not (math.isfinite(width) and math.isfinite(height)) or width < 1 or height < 1:
        raise InvalidSource(kind, f"the SVG's size ({_short(width)} × {_short(height)} px) is not a picture's size: "
                                  f"it must be finite and at least 1 px a side")
    return width, height


def _short(value: float) -> str:
    return f"{value:.3g}"


def _svg_size(kind: Kind, root: Any) -> tuple[float, float]:
    if local_name(root) != "svg":
        raise InvalidSource(kind, f"not an SVG document (its root element is <{local_name(root)}>)")
    width, height = _length(root.get("width")), _length(root.get("height"))
    box = None
    if root.get("viewBox"):
        try:
            parts = [float(p) for p in root.get("viewBox").replace(",", " ").split()]
            if len(parts) == 4 and parts[2] > 0 and parts[3] > 0:
                box = parts[2], parts[3]
        except ValueError:
            pass
    if width and height:
        return width, height
    if box is not None:
        if width:
            return width, width * box[1] / box[0]
        if height:
            return height * box[0] / box[1], height
        return box
    raise InvalidSource(kind, "the SVG has no size: neither width and height nor a viewBox")
