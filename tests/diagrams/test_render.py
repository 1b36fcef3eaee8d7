"""Each kind drawn by its real renderer (bpmn-js and mermaid in Chromium, dot, PlantUML), checked in SVG and PNG."""

from __future__ import annotations

import asyncio
import io
import re
import time

import pytest
from lxml import etree
from PIL import Image

from diagrams import DiagramRenderer, Kind, Rendered, render_async
from diagrams.errors import InvalidSource, UnknownKind

from .conftest import DATA, require


def svg_text(rendered: Rendered) -> str:
    """Every text of the drawing, without white space (renderers break labels over lines as they like)."""
    root = etree.fromstring(rendered.svg, etree.XMLParser(resolve_entities=False, no_network=True))
    return re.sub(r"\s+", "", "".join(root.itertext()))


def assert_labels(rendered: Rendered, *labels: str) -> None:
    """Each label is in the SVG the renderer drew (before it was rasterised)."""
    text = svg_text(rendered)
    missing = [label for label in labels if label.replace(" ", "") not in text]
    assert not missing, f"not in the {rendered.kind.label} drawing: {missing}"


def check_png(rendered: Rendered, width: tuple[int, int], height: tuple[int, int]) -> None:
    with Image.open(io.BytesIO(rendered.png)) as image:
        assert image.format == "PNG"
        assert image.size == (rendered.width, rendered.height)
        assert width[0] <= image.width <= width[1] and height[0] <= image.height <= height[1], image.size
        gray = image.convert("L")
        dark = sum(1 for value in gray.getdata() if value < 128)
    assert dark > 0.005 * rendered.width * rendered.height, "the picture is blank"


def test_bpmn_with_two_lanes_a_gateway_and_flows(renderer: DiagramRenderer):
    """bpmn-js draws the process's lanes, tasks, gateway and flow labels; the PNG is twice its layout's size."""
    require(renderer, Kind.BPMN)
    rendered = renderer.render((DATA / "order-process.bpmn").read_bytes(), name="order-process.bpmn")
    assert rendered.kind is Kind.BPMN and re.fullmatch(r"bpmn-js 18\.31\.1", rendered.renderer)
    assert_labels(rendered, "Order handling", "Sales", "Warehouse", "Order received", "Check stock", "In stock?",
                  "Ship goods", "Reject order", "Order shipped", "yes", "no")
    check_png(rendered, width=(1400, 1700), height=(650, 850))  # the DI layout is 770×370


def test_mermaid_flowchart(renderer: DiagramRenderer):
    """mermaid (strict security level) draws the flowchart with its node and edge labels."""
    require(renderer, Kind.MERMAID)
    rendered = renderer.render((DATA / "flow.mmd").read_bytes(), name="flow.mmd")
    assert rendered.renderer == "mermaid 12.3.0"
    assert_labels(rendered, "Order received", "In stock?", "Ship goods", "Reject order", "Send invoice", "yes", "no")
    check_png(rendered, width=(1200, 2600), height=(250, 900))


def test_graphviz_dot_graph(renderer: DiagramRenderer):
    """dot lays the graph out; the labels are in its SVG."""
    require(renderer, Kind.GRAPHVIZ)
    rendered = renderer.render((DATA / "graph.dot").read_bytes(), name="graph.gv")
    assert rendered.renderer.startswith("Graphviz dot 2.")
    assert_labels(rendered, "Order received", "Check stock", "Ship goods", "Reject order", "in stock", "out of stock")
    check_png(rendered, width=(600, 1400), height=(150, 500))


def test_plantuml_activity_diagram(renderer: DiagramRenderer):
    """PlantUML draws the activity diagram (title, actions, the decision and its branches)."""
    require(renderer, Kind.PLANTUML)
    rendered = renderer.render((DATA / "activity.puml").read_bytes(), name="activity.puml")
    assert rendered.renderer.startswith("PlantUML 1.2026.8 on Java ")
    assert_labels(rendered, "Order handling", "Receive order", "In stock?", "yes", "no", "Ship goods", "Reject order",
                  "Send invoice")
    check_png(rendered, width=(350, 700), height=(500, 1000))


def test_svg_is_rasterised_at_its_own_size_times_the_scale(renderer: DiagramRenderer):
    """An SVG with only a viewBox is drawn at the viewBox's size × DIAGRAM_SCALE."""
    require(renderer, Kind.SVG)
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 100"><rect width="300" height="100" '
           b'fill="#123"/><text x="10" y="60" fill="white">Approve</text></svg>')
    rendered = renderer.render(svg, kind="svg")
    assert (rendered.width, rendered.height) == (600, 200)
    assert svg_text(rendered) == "Approve"
    with Image.open(io.BytesIO(rendered.png)) as image:
        assert image.convert("RGB").getpixel((5, 5)) == (0x11, 0x22, 0x33)


def test_errors_name_the_kind_and_the_reason(renderer: DiagramRenderer):
    """Malformed XML (with its line), a BPMN file without layout, a Mermaid syntax error (with its line), bad DOT."""
    require(renderer, *Kind)
    with pytest.raises(InvalidSource, match=r"^BPMN: malformed XML: .* \(line 3\)$"):
        renderer.render(b'<?xml version="1.0"?>\n<definitions>\n<oops></definitions>\n', name="p.bpmn")
    no_layout = re.sub(rb"<bpmndi:BPMNDiagram.*</bpmndi:BPMNDiagram>", b"",
                       (DATA / "order-process.bpmn").read_bytes(), flags=re.DOTALL)
    with pytest.raises(InvalidSource, match=r"^BPMN: no diagram layout \(BPMN DI\)"):
        renderer.render(no_layout, name="p.bpmn")
    with pytest.raises(InvalidSource, match=r"^BPMN: not BPMN 2.0 XML: the root element is <svg>"):
        renderer.render(b"<svg xmlns='http://www.w3.org/2000/svg'/>", name="p.bpmn")
    with pytest.raises(InvalidSource, match=r"^Mermaid: syntax error: .* \(line 3\)$") as mermaid:
        renderer.render(b"flowchart LR\n  A --> B\n  B -=> C\n", name="bad.mmd")
    assert mermaid.value.line == 3 and mermaid.value.code == "invalid"
    with pytest.raises(InvalidSource, match=r"^Graphviz: syntax error near .* \(line 2\)$"):
        renderer.render(b"digraph {\n a -> ;\n}\n", name="bad.dot")
    with pytest.raises(InvalidSource, match=r"^PlantUML: .*\(line 4\)$"):
        renderer.render(b"@startuml\nstart\n:a;\n:b\nfoo (\n@enduml\n", name="bad.puml")
    with pytest.raises(UnknownKind, match=r"'notes.txt' is not a diagram source .* BPMN \(\.bpmn\)"):
        renderer.render(b"hello", name="notes.txt")


async def test_render_async_leaves_the_event_loop_free(renderer: DiagramRenderer):
    """While a diagram renders (on a thread), the event loop keeps running other tasks."""
    require(renderer, Kind.PLANTUML)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    rendered = await render_async((DATA / "activity.puml").read_bytes(), name="activity.puml", renderer=renderer)
    task.cancel()
    assert rendered.kind is Kind.PLANTUML
    assert len(gaps) > 20 and max(gaps) < 0.25, max(gaps)


def test_mermaid_line_breaks_spaces_and_links(renderer: DiagramRenderer):
    """mermaid writes HTML-flavoured SVG: <br>, &nbsp; and click links were refused as malformed XML or as declared
    entities; the page now writes it back as XML."""
    require(renderer, Kind.MERMAID)
    source = b'flowchart TD\n  A["Check<br>stock"] --> B["Ship&nbsp;goods"]\n  click A "https://example.com"\n'
    rendered = renderer.render(source, name="breaks.mmd")
    assert_labels(rendered, "Check", "stock", "Ship")
    check_png(rendered, width=(100, 2000), height=(100, 2000))
