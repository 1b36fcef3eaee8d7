"""``python -m playground.client``: streams the answer to stdout, timings to stderr, one-line reasons on failure."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

from diagrams import Kind
from playground.client import WorkerClient, user_message
from wire.protocol import Done

from ..conftest import DIAGRAMS_DATA, require
from .conftest import ROOT

PROMPT = "Describe this diagram as a Markdown table."


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "playground.client", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


async def library_answer(url: str, png: bytes, **params: object) -> str:
    async with WorkerClient(url) as client:
        async for item in client.generate([user_message(PROMPT, image=png)], **params):
            if isinstance(item, Done):
                return item.content
    raise AssertionError("no done")


def test_cli_streams_the_answer_and_prints_timings(worker, png, tmp_path):
    """stdout is exactly the answer (plus a newline); stderr ends with one line of timings."""
    image = tmp_path / "diagram.png"
    image.write_bytes(png)
    result = cli("--url", worker.url, "--image", str(image), "--adapter", "demo-a", "--max-tokens", "12",
                 "--temperature", "0", PROMPT)
    assert result.returncode == 0, result.stderr
    expected = asyncio.run(library_answer(worker.url, png, adapter="demo-a", max_tokens=12, temperature=0))
    assert result.stdout == expected + "\n"
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"ttft \d+\.\d ms \| \d+\.\d tokens/s \| 12 tokens \| finish length \| adapter demo-a "
                        r"\| total \d+\.\d ms", last), last
    assert re.search(r"^adapter demo-a \(rank 8, (cached|fetched), [\d.]+ ms\)$", result.stderr, re.M)


def test_cli_worker_down_exits_75_with_one_line(down_url):
    """An unreachable worker: exit status 75 (try later) and a single line naming the reason."""
    result = cli("--url", down_url, PROMPT)
    assert result.returncode == 75
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"error: unreachable: the worker at {down_url} is not reachable: connection refused")


def test_cli_refused_request_exits_1_with_the_worker_code(worker):
    """An unknown adapter: exit status 1 and the worker's code in one line."""
    result = cli("--url", worker.url, "--adapter", "no-such-adapter", PROMPT)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: adapter_not_found: ")


def test_cli_missing_image_exits_2(worker, tmp_path):
    """An image that cannot be read: exit status 2 before anything is sent."""
    result = cli("--url", worker.url, "--image", str(tmp_path / "missing.png"), PROMPT)
    assert result.returncode == 2
    assert result.stderr == f"error: cannot read image {str(tmp_path / 'missing.png')!r}: No such file or directory\n"


def test_cli_renders_a_bpmn_file_before_sending_it(worker, renderer, tmp_path):
    """--image process.bpmn: drawn as a PNG here (bpmn-js), then the answer streams as for a picture."""
    require(renderer, Kind.BPMN)
    source = tmp_path / "process.bpmn"
    source.write_bytes((DIAGRAMS_DATA / "order-process.bpmn").read_bytes())
    result = cli("--url", worker.url, "--image", str(source), "--max-tokens", "8", "--temperature", "0", PROMPT)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^process\.bpmn: BPMN drawn by bpmn-js 18\.31\.1, \d+×\d+ px, in \d+ ms$", result.stderr, re.M)
    png = renderer.render(source.read_bytes(), name="process.bpmn").png  # the same drawing, sent by the library
    assert result.stdout == asyncio.run(library_answer(worker.url, png, max_tokens=8, temperature=0)) + "\n"


def test_cli_diagram_that_cannot_be_drawn_exits_2(worker, renderer, tmp_path):
    """A PlantUML file that includes /etc/passwd: exit status 2 with the kind and the reason; nothing is sent."""
    require(renderer, Kind.PLANTUML)
    source = tmp_path / "leak.puml"
    source.write_bytes(b"@startuml\n!include /etc/passwd\nA -> B\n@enduml\n")
    result = cli("--url", worker.url, "--image", str(source), PROMPT)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("error: leak.puml: PlantUML: cannot include /etc/passwd: the sandbox reads no file or URL "
                             "(line 2)\n")


def test_cli_missing_renderer_exits_69_not_2(worker, tmp_path):
    """A diagram source whose renderer is not installed (here: Chromium moved away): exit status 69 (EX_UNAVAILABLE:
    this machine lacks a program; 2 is for bad arguments), one line saying what to install; nothing is sent."""
    source = tmp_path / "process.bpmn"
    source.write_bytes((DIAGRAMS_DATA / "order-process.bpmn").read_bytes())
    result = subprocess.run([sys.executable, "-m", "playground.client", "--url", worker.url, "--image", str(source),
                             PROMPT], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DIAGRAM_CHROMIUM_PATH": str(tmp_path / "no-chromium")})
    assert result.returncode == 69 and result.stdout == "", result.stderr
    assert len(result.stderr.splitlines()) == 1 and "renderers" in result.stderr, result.stderr
