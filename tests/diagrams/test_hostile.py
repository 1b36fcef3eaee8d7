"""Hostile sources are the normal case: each is refused or stopped with its error, and nothing is read from disk or
the network (a named pipe shows any open of a file, a loopback server any request)."""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from PIL import Image

from diagrams import DiagramRenderer, DiagramSettings, Kind, plantuml
from diagrams.errors import (
    DiagramError,
    ForbiddenSource,
    InvalidSource,
    OutputTooLarge,
    RendererMissing,
    RenderTimeout,
    SourceTooLarge,
)

from .conftest import DATA, CountingServer, Tripwire, require

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"><bpmn:process id="p" name="&lol9;"/>
</bpmn:definitions>
"""


def renderer_processes() -> list[str]:
    """dot and java processes under this one (a stopped render leaves none); one that ends while we look is gone."""
    names = []
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
        except psutil.Error:  # it ended between the listing and the look
            continue
        if name in ("dot", "java"):
            names.append(name)
    return names


@pytest.fixture
def quick() -> Iterator[DiagramRenderer]:
    """A renderer with a 3-second time limit (its own Chromium)."""
    with DiagramRenderer(DiagramSettings(timeout_s=3)) as fast:
        yield fast


def test_billion_laughs_is_refused_before_it_expands(renderer: DiagramRenderer):
    """A BPMN (or SVG) file declaring entities is refused at once, with little memory and no renderer started."""
    require(renderer, Kind.BPMN)
    started = time.monotonic()
    rss = psutil.Process().memory_info().rss
    for name in ("bomb.bpmn", "bomb.svg"):
        with pytest.raises(ForbiddenSource, match=r"(BPMN|SVG): the XML declares entities: refused"):
            renderer.render(BILLION_LAUGHS.replace(b"bpmn:process", b"svg"), name=name)
    assert time.monotonic() - started < 1.0
    assert psutil.Process().memory_info().rss - rss < 50 * 1024 * 1024


def test_mermaid_over_the_size_limit_is_refused_unread(renderer: DiagramRenderer):
    """A source over DIAGRAM_MAX_SOURCE_BYTES is refused before any renderer sees it."""
    limit = renderer.settings.max_source_bytes
    source = b"flowchart LR\n" + b"  A --> B\n" * (limit // 10)
    assert len(source) > limit
    started = time.monotonic()
    with pytest.raises(SourceTooLarge, match=rf"^Mermaid: the source is {len(source)} bytes, more than {limit} "
                                             r"\(DIAGRAM_MAX_SOURCE_BYTES\)$"):
        renderer.render(source, name="huge.mmd")
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("attribute", [
    'a [image="{path}", label=""]',
    'a [shape=epsf, shapefile="{path}"]',
    'a [label=<<TABLE><TR><TD><IMG SRC="{path}"/></TD></TR></TABLE>>]',
    'a ["ima" + "ge"="{path}"]',
], ids=["image", "shapefile", "html-img", "concatenated"])
def test_dot_that_reads_a_local_file_is_refused(renderer: DiagramRenderer, tripwire: Tripwire, attribute: str):
    """image=, shapefile=, an HTML <IMG> (and a spelling a pattern would miss): Graphviz refuses to open the file."""
    require(renderer, Kind.GRAPHVIZ)
    source = "digraph G {\n  " + attribute.format(path=tripwire.path) + ";\n  a -> b;\n}\n"
    with pytest.raises(ForbiddenSource, match=r"^Graphviz: the graph reads a file"):
        renderer.render(source.encode(), name="reads.dot")
    assert not tripwire.close(), "dot opened the file"


def test_plantuml_include_of_etc_passwd_is_refused(renderer: DiagramRenderer, tripwire: Tripwire,
                                                   http_server: CountingServer):
    """!include of /etc/passwd, of a file, of a URL, !includeurl, !import: the sandbox refuses each."""
    require(renderer, Kind.PLANTUML)
    with pytest.raises(ForbiddenSource, match=r"^PlantUML: cannot include /etc/passwd: the sandbox reads no file "
                                              r"or URL \(line 2\)$") as caught:
        renderer.render(b"@startuml\n!include /etc/passwd\nAlice -> Bob : hello\n@enduml\n", name="p.puml")
    assert "root:" not in str(caught.value)
    for line in (f"!include {tripwire.path}", f"!include_many {tripwire.path}", f"!import {tripwire.path}",
                 f"!include {http_server.url}/a.puml", f"!includeurl {http_server.url}/b.puml"):
        with pytest.raises(ForbiddenSource, match=r"^PlantUML: .*the sandbox reads no file or URL \(line 2\)$"):
            renderer.render(f"@startuml\n{line}\nA -> B\n@enduml\n".encode(), name="p.puml")
    assert not tripwire.close(), "PlantUML opened the file"
    assert http_server.requests == []


def test_plantuml_sees_no_environment_variable(renderer: DiagramRenderer, monkeypatch: pytest.MonkeyPatch):
    """%getenv finds nothing of this process's environment (a token, say) to draw into the picture."""
    require(renderer, Kind.PLANTUML)
    monkeypatch.setenv("INFERENCE_AUTH_TOKEN", "s3cr3t-token-value")
    rendered = renderer.render(b'@startuml\nA -> B : [%getenv("INFERENCE_AUTH_TOKEN")]\n@enduml\n', name="e.puml")
    assert b"[]" in rendered.svg and b"s3cr3t" not in rendered.svg


def test_svg_that_refers_outside_itself_is_refused(renderer: DiagramRenderer, tripwire: Tripwire,
                                                   http_server: CountingServer):
    """An SVG that would load a file or a URL (image, use, CSS url(), @import) is refused; nothing is fetched."""
    require(renderer, Kind.SVG)
    head = b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="50" height="50">'
    for body in (f'<image href="file://{tripwire.path}" width="9" height="9"/>',
                 f'<image xlink:href="{tripwire.path}" width="9" height="9"/>',
                 f'<use href="{http_server.url}/s.svg#x"/>',
                 f'<rect width="9" height="9" style="fill: url({http_server.url}/p.svg#f)"/>',
                 f'<style>@import "{http_server.url}/s.css";</style>'):
        with pytest.raises(InvalidSource, match=r"^SVG: the drawing refers to something outside it"):
            renderer.render(head + body.encode() + b"</svg>", name="x.svg")
    assert not tripwire.close() and http_server.requests == []


def test_the_renderer_page_reaches_no_network(renderer: DiagramRenderer, http_server: CountingServer):
    """A script in a renderer page that fetches a URL or loads an image gets nothing: every request is refused."""
    require(renderer, Kind.SVG)

    async def job(page):
        await page.set_content(f"<img src='{http_server.url}/pixel.png'>")
        return await page.evaluate(f"() => fetch('{http_server.url}/data').then(r => r.text(), e => 'refused')")

    before = renderer.chromium.blocked_requests
    assert renderer.chromium.run(job, timeout_s=10) == "refused"
    assert http_server.requests == []
    assert renderer.chromium.blocked_requests >= before + 1


def test_a_render_that_never_ends_is_stopped(quick: DiagramRenderer):
    """A dense graph dot would lay out for minutes: stopped at the time limit, and no dot process is left."""
    require(quick, Kind.GRAPHVIZ)
    edges = " ".join(f"n{i} -> n{j};" for i in range(120) for j in range(120) if i != j)
    started = time.monotonic()
    with pytest.raises(RenderTimeout, match=r"^Graphviz: the render took longer than 3 s \(DIAGRAM_TIMEOUT_S\) "
                                            r"and was stopped$"):
        quick.render(f"digraph {{ {edges} }}".encode(), name="dense.dot")
    assert time.monotonic() - started < 4.5
    assert renderer_processes() == []


def test_a_long_plantuml_render_is_stopped_and_java_killed(quick: DiagramRenderer):
    """12,000 messages take PlantUML longer than the limit: stopped, and its Java process is gone.

    (PlantUML's preprocessor stops a loop that never ends by itself: "Infinite loop?".)"""
    require(quick, Kind.PLANTUML)
    lines = "".join(f"P{i % 40} -> P{(i * 7 + 1) % 40} : message {i}\n" for i in range(12000))
    started = time.monotonic()
    with pytest.raises(RenderTimeout, match=r"^PlantUML: the render took longer than 3 s"):
        quick.render(f"@startuml\n{lines}@enduml\n".encode(), name="long.puml")
    assert time.monotonic() - started < 4.5
    assert renderer_processes() == []


def test_a_slow_page_is_closed_and_chromium_goes_on(quick: DiagramRenderer):
    """A Mermaid render past the limit: its page is closed (no context left), and the next render works."""
    require(quick, Kind.MERMAID)
    quick.settings.timeout_s = 0.7
    big = "flowchart TD\n" + "".join(f"  n{i} --> n{(i * 7 + 3) % 150}\n" for i in range(300))
    with pytest.raises(RenderTimeout, match=r"^Mermaid: the render took longer than 0.7 s"):
        quick.render(big.encode(), name="big.mmd")
    quick.settings.timeout_s = 20
    assert quick.render((DATA / "flow.mmd").read_bytes(), name="flow.mmd").kind is Kind.MERMAID
    browser = quick.chromium._browser
    assert browser is not None and browser.is_connected() and browser.contexts == []


def test_output_pixel_limit(renderer: DiagramRenderer):
    """A drawing over DIAGRAM_MAX_PIXELS is scaled down to fit; one that would shrink below DIAGRAM_MIN_SCALE is
    refused."""
    require(renderer, Kind.SVG)
    s = renderer.settings

    def svg(width: int, height: int) -> bytes:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<rect width="{width}" height="{height}" fill="navy"/></svg>').encode()

    rendered = renderer.render(svg(3000, 2000), name="wide.svg")
    assert rendered.width * rendered.height <= s.max_pixels and rendered.width > 3000
    assert abs(rendered.width / rendered.height - 1.5) < 0.01
    with Image.open(io.BytesIO(rendered.png)) as image:
        assert image.size == (rendered.width, rendered.height)
    with pytest.raises(OutputTooLarge, match=r"^SVG: the drawing is 20000×20000 px: it would have to shrink to "
                                             r"\d+% of its size to fit 8000000 pixels"):
        renderer.render(svg(20000, 20000), name="huge.svg")
    with pytest.raises(OutputTooLarge):  # a strip too long for DIAGRAM_MAX_SIDE even at a quarter of its size
        renderer.render(svg(40000, 10), name="strip.svg")


def test_a_missing_renderer_says_how_to_install_it(tmp_path):
    """A renderer that is not installed: the error says which and how to install it; other kinds still work."""
    settings = DiagramSettings(dot_path=str(tmp_path / "no-dot"), java_path=str(tmp_path / "no-java"),
                               node_modules=tmp_path, chromium_path=tmp_path / "no-chromium")
    with DiagramRenderer(settings) as bare:
        with pytest.raises(RendererMissing, match=r"^Graphviz: not installed: Graphviz's dot \(apt-get install "
                                                  r"graphviz \(or: make renderers\)\)"):
            bare.render(b"digraph { a -> b }", name="g.dot")
        with pytest.raises(RendererMissing, match=r"^BPMN: not installed: bpmn-js \(make renderers"):
            bare.render((DATA / "order-process.bpmn").read_bytes(), name="p.bpmn")
        with pytest.raises(RendererMissing, match=r"^PlantUML: not installed: Java .*; the PlantUML jar"):
            bare.render(b"@startuml\nA -> B\n@enduml\n", name="p.puml")
        assert all(why is not None and "Chromium" in why for why in bare.available().values())


# ---- found by a review of the renderer (each failed before its fix) --------------------------------------------------


@pytest.mark.parametrize("size", ['width="1e-200" height="1e-200"', 'viewBox="0 0 1e-200 1e-200"',
                                  'width="0.5" height="0.5"'])
def test_an_svg_smaller_than_a_pixel_is_refused_not_a_crash(renderer: DiagramRenderer, size: str):
    """A size that underflowed to 0 raised ZeroDivisionError: a traceback in the playground, a whole set aborted."""
    with pytest.raises(InvalidSource, match=r"^SVG: the SVG's size .* is not a picture's size"):
        renderer.render(f'<svg xmlns="http://www.w3.org/2000/svg" {size}/>'.encode(), name="tiny.svg")


def test_error_messages_echo_little_of_the_input(renderer: DiagramRenderer):
    """A 100 KB file name or processing instruction came back whole in the error."""
    with pytest.raises(DiagramError) as unknown:
        renderer.render(b"x", name="x" * 100_000 + ".xyz")
    assert len(str(unknown.value)) < 400
    sheet = b'<?xml-stylesheet href="' + b"a" * 200_000 + b'"?><svg xmlns="http://www.w3.org/2000/svg" width="9"/>'
    with pytest.raises(InvalidSource) as refused:
        renderer.render(sheet, name="sheet.svg")
    assert len(str(refused.value)) < 400


def chromium_browsers() -> list[psutil.Process]:
    """Chromium's browser processes under this one (not its renderer, GPU or utility processes)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if cmdline and proc.name().startswith("chromium") and not any(a.startswith("--type=") for a in cmdline):
            found.append(proc)
    return found


def test_renders_starting_together_share_one_browser_that_sees_no_secret(monkeypatch: pytest.MonkeyPatch):
    """Three first renders at once started three Chromiums (two leaked past close()); the browser inherited the
    process's environment, an auth token included."""
    monkeypatch.setenv("INFERENCE_AUTH_TOKEN", "secret-token-of-the-playground")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    with DiagramRenderer(DiagramSettings(max_concurrent=3)) as fresh:
        require(fresh, Kind.SVG)
        before = {p.pid for p in chromium_browsers()}
        threads = [threading.Thread(target=fresh.render, args=(svg,), kwargs={"name": "a.svg"}) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ours = [p for p in chromium_browsers() if p.pid not in before]
        assert len(ours) == 1, [p.cmdline()[:2] for p in ours]
        environ = ours[0].environ()
        assert "INFERENCE_AUTH_TOKEN" not in environ and "secret-token" not in " ".join(environ.values())
    assert [p for p in chromium_browsers() if p.pid not in before] == []


def test_renders_beyond_the_limit_wait_for_a_turn(quick: DiagramRenderer):
    """DIAGRAM_MAX_CONCURRENT counted Chromium pages only: four PlantUML renders ran four Java processes at once."""
    require(quick, Kind.PLANTUML)
    with DiagramRenderer(DiagramSettings(max_concurrent=1)) as one:
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], sum(1 for name in renderer_processes() if name == "java"))

        watcher = threading.Thread(target=watch)
        watcher.start()
        source = b"@startuml\nAlice -> Bob: hello\n@enduml\n"
        threads = [threading.Thread(target=one.render, args=(source,), kwargs={"name": "s.puml"}) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done.set()
        watcher.join()
    assert peak[0] == 1


def test_plantuml_runs_dot_under_the_memory_limit(renderer: DiagramRenderer, tmp_path, monkeypatch):
    """PlantUML starts dot itself, which had no limit (1.5 GB for a graph the direct dot stops at 1 GiB): it now
    starts it through a wrapper that sets DIAGRAM_DOT_MAX_MEMORY_MB, and the wrapper's limit holds."""
    require(renderer, Kind.PLANTUML, Kind.GRAPHVIZ)
    dot = shutil.which(renderer.settings.dot_path)
    wrapper = plantuml.DOT_WRAPPER
    env = {"PATH": "/usr/bin:/bin", "DIAGRAM_DOT_REAL": str(dot)}
    starved = subprocess.run([str(wrapper), "-V"], env={**env, "DIAGRAM_DOT_LIMIT_KB": "1024"}, capture_output=True)
    assert starved.returncode != 0, "dot started in 1 MiB: the limit is not applied"
    fed = subprocess.run([str(wrapper), "-V"], env={**env, "DIAGRAM_DOT_LIMIT_KB": "65536"}, capture_output=True)
    assert fed.returncode == 0 and b"version" in fed.stderr

    log = tmp_path / "dot-calls.log"
    spy = tmp_path / "spy.sh"
    spy.write_text(f'#!/bin/sh\necho "$* $DIAGRAM_DOT_LIMIT_KB" >> {log}\nexec {wrapper} "$@"\n')
    spy.chmod(0o755)
    monkeypatch.setattr(plantuml, "DOT_WRAPPER", spy)
    rendered = renderer.render(b"@startuml\nclass Order\nclass Invoice\nOrder --> Invoice : bills\n@enduml\n",
                               name="classes.puml")
    assert b"Invoice" in rendered.svg
    calls = log.read_text().splitlines()
    assert f"-Tsvg {renderer.settings.dot_max_memory_mb * 1024}" in calls, calls
