"""Graphviz DOT → SVG with Debian's ``dot``, which may read no file.

``dot`` runs in Graphviz's web-server mode (``SERVER_NAME`` set, ``GV_FILE_PATH`` unset: it loads no image, shape
file or HTML ``<IMG>``), in an empty directory, with a bare environment, a memory limit and a time limit. A graph that
asks for a file is refused, whatever spelling it uses (``image=``, ``"ima" + "ge"``, ``shapefile``, ``<IMG SRC>``):
Graphviz itself reports the attempt.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from . import process
from .errors import ForbiddenSource, InvalidSource, RenderFailed
from .kinds import Kind
from .settings import DiagramSettings

_SYNTAX = re.compile(r"syntax error in line (\d+)(.*)")
_FILE_ATTEMPT = ("file loading is disabled", "is unsafe", "shapefile not set or not found")
INSTALL = "apt-get install graphviz (or: make renderers)"


def find(settings: DiagramSettings) -> str | None:
    return shutil.which(settings.dot_path)


@functools.cache
def version(path: str) -> str:
    found = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10)
    match = re.search(r"version (\S+)", found.stderr + found.stdout)
    return match.group(1) if match else "unknown"


def to_svg(source: bytes, settings: DiagramSettings, timeout_s: float) -> bytes:
    dot = find(settings)
    assert dot is not None  # the caller checked
    done = process.run(Kind.GRAPHVIZ, [dot, "-Tsvg"], source, timeout_s=timeout_s, limit_s=settings.timeout_s,
                       max_memory_bytes=settings.dot_max_memory_mb * 1024 * 1024)
    if any(marker in done.stderr for marker in _FILE_ATTEMPT):
        raise ForbiddenSource(Kind.GRAPHVIZ, "the graph reads a file (image=, shapefile= or an HTML <IMG>): "
                                             "Graphviz may not read files here")
    if done.returncode != 0:
        syntax = _SYNTAX.search(done.stderr)
        if syntax:
            raise InvalidSource(Kind.GRAPHVIZ, f"syntax error{syntax.group(2).rstrip()}", line=int(syntax.group(1)))
        message = " ".join(done.stderr.split())[:300] or f"dot exited with {done.returncode}"
        if done.returncode < 0 or "out of memory" in message.lower():
            raise RenderFailed(Kind.GRAPHVIZ, f"dot failed: {message}")
        raise InvalidSource(Kind.GRAPHVIZ, message.removeprefix("Error: "))
    if not done.stdout.strip():
        raise InvalidSource(Kind.GRAPHVIZ, "no graph in the file")
    return done.stdout
