"""The README and the protocol reference stay in sync with the code."""

from __future__ import annotations

from pathlib import Path

from diagrams import SUFFIXES, DiagramSettings
from inference_worker.config import Settings
from wire.errors import ErrorCode
from wire.protocol import CLIENT_TYPES

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_setting():
    """Every environment variable and its flag are in the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields:
        env = Settings.env_name(field)
        flag = "--" + env.removeprefix("INFERENCE_").lower().replace("_", "-")
        assert f"| `{env}` | `{flag}` |" in readme, env


def test_protocol_reference_documents_every_message_and_error_code():
    """docs/protocol.md has a section per client message and a row per error code."""
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for kind in CLIENT_TYPES:
        assert f"### `{kind}`" in doc, kind
    for code in ErrorCode:
        assert f"| `{code}` |" in doc, code


def test_readme_commands_exist():
    """The README's two commands are make targets, and .ci/run runs the test one."""
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_documents_every_diagram_setting_and_kind():
    """Every DIAGRAM_* variable is in the README's table, and every diagram source's file suffix is named."""
    readme = (ROOT / "README.md").read_text()
    for field in DiagramSettings.model_fields:
        assert f"| `DIAGRAM_{field.upper()}` |" in readme, field
    for suffix in SUFFIXES:
        assert f"`{suffix}`" in readme, suffix
    assert "make renderers" in readme and "renderers:" in (ROOT / "Makefile").read_text()
