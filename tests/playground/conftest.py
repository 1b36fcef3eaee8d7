"""Fixtures of the playground tests: images, free ports, the app's path."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "playground" / "app.py"


def png_bytes(size: tuple[int, int] = (320, 240), color: tuple[int, int, int] = (20, 120, 220)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    """A port nothing listens on (bound and released; good enough on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def png() -> bytes:
    return png_bytes()


@pytest.fixture
def down_url() -> str:
    """A WebSocket URL where no worker listens."""
    return f"ws://127.0.0.1:{free_port()}"


def reference_table(i: int) -> str:
    """A reference description of diagram ``i``: a Markdown table of steps, as the default prompt asks for."""
    return (f"| Step | Activity | Role | Next |\n|---|---|---|---|\n| 1 | Receive request {i} | Clerk | 2 |\n"
            f"| 2 | Check request {i} | Manager | 3 |\n| 3 | Archive | Clerk | end |\n\n"
            "Start: request. End: archived.\n")


def diagram_set(n: int = 5, references: bool = True) -> bytes:
    """A zip of ``n`` diagrams (distinct PNGs) in a folder, each with a .md reference of the same stem."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for i in range(1, n + 1):
            archive.writestr(f"set/diagram-{i}.png", png_bytes((160 + 16 * i, 120), (30 * i, 200 - 20 * i, 90)))
            if references:
                archive.writestr(f"set/diagram-{i}.md", reference_table(i))
    return buf.getvalue()


@pytest.fixture(autouse=True)
def history_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own PLAYGROUND_HISTORY_DIR (nothing is written to the home directory)."""
    path = tmp_path_factory.mktemp("history")
    monkeypatch.setenv("PLAYGROUND_HISTORY_DIR", str(path))
    return path
