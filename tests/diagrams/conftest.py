"""Fixtures of the renderer tests: tripwires for files and the network (the renderer is tests/conftest.py's)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import DIAGRAMS_DATA as DATA
from ..conftest import require

__all__ = ["DATA", "require"]


class Tripwire:
    """A named pipe that tells whether anything opened it: a reader's open lets a non-blocking writer's succeed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                continue
            self.opened = True
            os.close(fd)  # the reader sees the end of the file, and goes on

    def close(self) -> bool:
        self._stop.set()
        self._thread.join()
        return self.opened


@pytest.fixture
def tripwire(tmp_path: Path) -> Iterator[Tripwire]:
    wire = Tripwire(tmp_path / "secret.png")
    yield wire
    wire.close()


class CountingServer:
    """An HTTP server on loopback that counts the requests it gets (none is the right number)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"secret from the network")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()
