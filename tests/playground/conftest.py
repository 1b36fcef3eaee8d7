"""Fixtures of the playground tests: images, free ports, the app's path."""

from __future__ import annotations

import io
import socket
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
