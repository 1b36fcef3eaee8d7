"""The README and the pages under docs/ stay in sync with the code, and their links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from diagrams import SUFFIXES, DiagramSettings
from inference_worker.config import Settings
from wire.errors import ErrorCode
from wire.protocol import CLIENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_configuration_documents_every_setting():
    """Every environment variable and its flag are a row of the configuration table (docs/configuration.md)."""
    page = (DOCS / "configuration.md").read_text()
    for field in Settings.model_fields:
        env = Settings.env_name(field)
        flag = "--" + env.removeprefix("INFERENCE_").lower().replace("_", "-")
        assert f"| `{env}` | `{flag}` |" in page, env


def test_protocol_reference_documents_every_message_and_error_code():
    """docs/protocol.md has a section per client message and a row per error code."""
    doc = (DOCS / "protocol.md").read_text()
    for kind in CLIENT_TYPES:
        assert f"### `{kind}`" in doc, kind
    for code in ErrorCode:
        assert f"| `{code}` |" in doc, code


def test_readme_commands_exist():
    """The README's two commands are make targets, and .ci/run runs the test one."""
    readme = (ROOT / "README.md").read_text()
    assert "\nmake demo " in readme and "\nmake test " in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_a_front_door():
    """The README stays about a page: configuration and reference live in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "| `INFERENCE_MODEL_NAME` |" not in readme  # the configuration table is docs/configuration.md


def test_docs_document_every_diagram_setting_and_kind():
    """Every DIAGRAM_* variable is a row of docs/configuration.md, and docs/diagrams.md names every diagram source's
    file suffix and how to install the renderers."""
    configuration = (DOCS / "configuration.md").read_text()
    for field in DiagramSettings.model_fields:
        assert f"| `DIAGRAM_{field.upper()}` |" in configuration, field
    diagrams = (DOCS / "diagrams.md").read_text()
    for suffix in SUFFIXES:
        assert f"`{suffix}`" in diagrams, suffix
    assert "make renderers" in diagrams and "\nrenderers:" in (ROOT / "Makefile").read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than hyphens (and underscores) removed, spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a markdown page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    for line in strip_code(page.read_text()).splitlines():
        match = re.match(r"#{1,6} +(.+?) *#*$", line)
        if match:
            base = anchor = slug(match[1])
            n = 0
            while anchor in found:
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def strip_code(text: str) -> str:
    """The text without fenced code blocks, inline code and HTML comments (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links that point into this repository (no scheme)."""
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", strip_code(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def test_relative_links_lead_to_files_and_headings():
    """Every relative link in README.md and docs/*.md points to a file that exists, and an #anchor into a markdown
    page to one of its headings."""
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_link_checker_sees_links():
    """The link check reads links the way GitHub does, so that a passing check means something."""
    assert slug("Choosing an engine: transformers or vLLM") == "choosing-an-engine-transformers-or-vllm"
    assert slug("Benchmarks — latest results") == "benchmarks--latest-results"
    assert slug("`load_adapter`") == "load_adapter"
    links = relative_links(ROOT / "README.md")
    assert "docs/configuration.md" in links and "docs/protocol.md" in links
