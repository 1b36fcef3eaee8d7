"""Run a renderer program: source on stdin, SVG on stdout, a time limit, killed with its whole process group."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import RenderTimeout
from .kinds import Kind

# Renderers get a bare environment: no variable of this process can show up in a picture.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            # Graphviz's web-server mode: with SERVER_NAME set and GV_FILE_PATH unset it loads no file at all
            # (image=, shapefile=, <IMG SRC>), and says so on stderr.
            "SERVER_NAME": "diagram-renderer"}


def timeout_message(limit_s: float) -> str:
    return f"the render took longer than {limit_s:g} s (DIAGRAM_TIMEOUT_S) and was stopped"


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: str


def run(kind: Kind, argv: list[str], source: bytes, *, timeout_s: float, limit_s: float,
        env: dict[str, str] | None = None, max_memory_bytes: int | None = None) -> Finished:
    """Run ``argv`` in an empty temporary directory; past the limit its process group is killed (RenderTimeout)."""
    with tempfile.TemporaryDirectory(prefix="diagram-") as workdir:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env={**BASE_ENV, "HOME": workdir, **(env or {})},
                                start_new_session=True)
        if max_memory_bytes is not None:
            with contextlib.suppress(OSError):  # it may have exited already
                resource.prlimit(proc.pid, resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))
        try:
            stdout, stderr = proc.communicate(source, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RenderTimeout(kind, timeout_message(limit_s)) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return Finished(proc.returncode, stdout, stderr.decode("utf-8", errors="replace"))
