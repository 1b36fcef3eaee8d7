"""Test helpers: a strict synchronous raw-frame WebSocket client and builders of broken adapters and images.

The client is not the project's client library (:mod:`playground.client`, tested in tests/playground/) on purpose: the
worker's tests check each frame exactly as the worker sent it, in order, where the library validates, routes and folds
them into results; and they send frames the library refuses to build (malformed JSON, unknown types, oversized fields).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from websockets.sync.client import connect

from wire.protocol import parse_server_message

TERMINAL = ("done", "error")


@dataclass
class Stream:
    tokens: list[dict[str, Any]] = field(default_factory=list)
    terminal: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(t["content"] for t in self.tokens)


class Client:
    """A WebSocket client that checks every reply is a valid protocol message."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        kwargs.setdefault("open_timeout", 30)
        kwargs.setdefault("max_size", None)
        self.ws = connect(url, **kwargs)
        self.backlog: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        frame = self.ws.recv(timeout)
        assert isinstance(frame, str), "the server only sends text frames"
        parse_server_message(frame)  # raises if the reply is not a valid server message
        return json.loads(frame)

    def until(self, *types: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            out.append(message)
            if message["type"] in types:
                return out

    def request(self, message: dict[str, Any], *types: str, timeout: float = 60) -> dict[str, Any]:
        self.send(message)
        return self.until(*types, timeout=timeout)[-1]

    def generate(self, timeout: float = 120, **fields: Any) -> Stream:
        fields.setdefault("messages", [{"role": "user", "content": "Describe the process diagram."}])
        self.send({"type": "generate", **fields})
        return self.collect(fields.get("session_id"), timeout=timeout)

    def collect(self, session_id: str | None = None, timeout: float = 120) -> Stream:
        """The tokens and terminal message of one session; other sessions' messages stay in the backlog."""
        stream = Stream()
        deadline = time.monotonic() + timeout
        stashed: list[dict[str, Any]] = []
        while True:
            if self.backlog:
                message = self.backlog.pop(0)
            else:
                message = self.recv(max(0.01, deadline - time.monotonic()))
            if session_id is not None and message.get("session_id") not in (session_id, None):
                stashed.append(message)
                continue
            if message["type"] == "token":
                stream.tokens.append(message)
            elif message["type"] in TERMINAL:
                stream.terminal = message
                self.backlog[:0] = stashed
                return stream

    def load(self, adapter_path: str | None) -> dict[str, Any]:
        return self.request({"type": "load_adapter", "adapter_path": adapter_path},
                            "adapter_loaded", "adapter_unloaded", "error")

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def at_once(n: int, call: Callable[[], Any], timeout: float = 120) -> list[Any]:
    """Run ``call`` on ``n`` threads released together by a barrier; return what each returned."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    assert len(results) == n, "a thread did not finish in time"
    return results


def load_at_once(url: str, n: int, adapter_path: str) -> list[dict[str, Any]]:
    """``n`` connections send load_adapter for the same adapter at the same moment; their replies."""
    clients = [Client(url) for _ in range(n)]
    idle = list(clients)
    try:
        return at_once(n, lambda: idle.pop().load(adapter_path))
    finally:
        for c in clients:
            c.close()


def greedy(text: str = "Describe the process diagram.", max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0, **extra}


def image_b64(size: tuple[int, int] = (320, 240), fmt: str = "PNG", color: tuple[int, ...] = (20, 120, 220),
              mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def image_message(b64: str, text: str = "Describe this diagram.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": b64}, {"type": "text", "text": text}]}]


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims huge dimensions (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def copy_adapter(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    (dst / "manifest.json").unlink(missing_ok=True)
    return dst


def edit_config(directory: Path, **changes: Any) -> Path:
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return directory
