"""The worker as a process: readiness while loading, SIGTERM with streams running, CLI errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from tools.s3server import free_ports

from ..helpers import Client, greedy

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inference_worker", "--host", "127.0.0.1", "--port", "0", "--http-port", "off",
             *args],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on ws://[\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()

    def wait_port(self, timeout: float = 60) -> int:
        assert self._ready.wait(timeout), "".join(self.lines)
        assert self.port is not None
        return self.port

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/ready")[0] != 200:
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_not_ready_while_loading_then_ready(tmp_path):
    """While the demo builds and loads: /health 200 "loading", /ready 503, WebSocket refused 503; then ready."""
    worker = WorkerProcess("--demo", "--demo-dir", str(tmp_path / "demo"))
    try:
        worker.wait_port()
        status, body = worker.get("/ready")
        assert status == 503 and body["ready"] is False
        status, body = worker.get("/health")
        assert status == 200 and body["status"] == "loading"
        with pytest.raises(InvalidStatus) as info:
            Client(worker.url)
        assert info.value.response.status_code == 503
        worker.wait_ready()
        with Client(worker.url) as c:
            assert c.generate(**greedy(max_tokens=5)).terminal["type"] == "done"
        assert any("meaningless" in line for line in worker.lines), "the demo says its output is meaningless"
    finally:
        assert worker.stop() == 0


def serve_demo(demo, *extra: str) -> WorkerProcess:
    worker = WorkerProcess("--model-name", str(demo.model_dir), "--adapter-store-dir", str(demo.store_dir), *extra)
    worker.wait_port()
    worker.wait_ready()
    return worker


def test_sigterm_lets_running_streams_finish_and_exits_0(demo):
    """SIGTERM: no new connections, the running stream still ends with done, exit code 0."""
    worker = serve_demo(demo, "--shutdown-grace-s", "30")
    with Client(worker.url) as c:
        c.load("demo-a")
        c.send({"type": "generate", "session_id": "s", **greedy(max_tokens=400)})
        assert c.recv()["type"] == "token"
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises((InvalidStatus, OSError)):
            Client(worker.url, open_timeout=3)
        done = c.collect("s").terminal
        assert done["type"] == "done" and done["finish_reason"] == "length", done
    assert worker.proc.wait(60) == 0
    assert any("stopped" in line for line in worker.lines)


def test_sigterm_keeps_the_port_open_answering_503_for_the_notice_period(demo):
    """After SIGTERM, with nothing running, /ready and new handshakes get 503 (not a refused connection) for
    SHUTDOWN_NOTICE_S, so that a load balancer takes the replica out first; then the port closes and exit is 0."""
    worker = WorkerProcess("--model-name", str(demo.model_dir), "--adapter-store-dir", str(demo.store_dir),
                           env={"SHUTDOWN_NOTICE_S": "4"})
    worker.wait_port()
    worker.wait_ready()
    with Client(worker.url) as c:
        worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while worker.get("/ready")[0] == 200:
            assert time.monotonic() < deadline, "/ready never turned 503"
            time.sleep(0.02)
        status, body = worker.get("/ready")
        assert status == 503 and body["draining"] is True
        with pytest.raises(InvalidStatus) as info:
            Client(worker.url, open_timeout=3)
        assert info.value.response.status_code == 503
        err = c.generate(**greedy(max_tokens=5)).terminal
        assert err["type"] == "error" and err["code"] == "shutting_down"
        assert worker.proc.poll() is None, "still serving the notice period"
    assert worker.proc.wait(60) == 0
    with pytest.raises(OSError):
        worker.get("/ready")


def test_a_demo_build_killed_midway_leaves_nothing_behind(tmp_path):
    """SIGKILL while the demo builds into a fresh INFERENCE_DEMO_DIR: the next build removes the .build-* left."""
    root = tmp_path / "demo"
    build = [sys.executable, "-c", f"from checkpoints.demo import ensure_demo; ensure_demo({str(root)!r})"]
    proc = subprocess.Popen(build, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob(".build-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(30)
    assert list(root.glob(".build-*")), "killed midway"
    subprocess.run(build, cwd=ROOT, check=True, timeout=300)
    assert not list(root.glob(".build-*"))
    assert (root / "demo.json").exists() and (root / "model" / "config.json").exists()
    assert sorted(p.name for p in (root / "adapters").iterdir() if not p.name.startswith(".")) == ["demo-a", "demo-b"]


def test_sigterm_after_grace_ends_streams_with_an_error(demo):
    """With no grace left, running streams end with exactly one error (shutting_down); exit code 0."""
    worker = serve_demo(demo, "--shutdown-grace-s", "0")
    with Client(worker.url) as c:
        c.send({"type": "generate", "session_id": "s", **greedy(max_tokens=100_000)})
        assert c.recv()["type"] == "token"
        worker.proc.send_signal(signal.SIGTERM)
        stream = c.collect("s", timeout=30)
        assert stream.terminal["type"] == "error" and stream.terminal["code"] == "shutting_down"
        assert stream.terminal["retryable"] is True
    assert worker.proc.wait(60) == 0


def test_sigterm_drains_the_http_api_too(demo):
    """SIGTERM with no grace: a streamed chat completion ends with exactly one shutting_down error event and [DONE];
    during the notice the HTTP port's /ready answers 503 and a new request 503 shutting_down; exit code 0."""
    (http_port,) = free_ports(1)
    worker = serve_demo(demo, "--http-port", str(http_port), "--shutdown-grace-s", "0", "--shutdown-notice-s", "10")
    events: list[str] = []
    with httpx2.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        chat = {"model": model, "messages": [{"role": "user", "content": "Describe the diagram."}],
                "max_tokens": 2048, "temperature": 0, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=chat) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:  # the role chunk and two pieces of text: it is generating
                    worker.proc.send_signal(signal.SIGTERM)
        errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
        assert [e["code"] for e in errors] == ["shutting_down"] and errors[0]["retryable"] is True
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        assert http.get("/ready").status_code == 503
        refused = http.post("/v1/chat/completions", json={**chat, "stream": False})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert worker.proc.wait(60) == 0


def test_help_lists_every_setting_with_its_environment_variable():
    """--help mirrors every environment variable of the settings."""
    from inference_worker.config import Settings

    out = subprocess.run([sys.executable, "-m", "inference_worker", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for field in Settings.model_fields:
        assert Settings.env_name(field) in out, field


def test_invalid_configuration_exits_2_with_a_clear_line():
    """A bad setting is reported by its environment variable name and exits 2."""
    run = subprocess.run([sys.executable, "-m", "inference_worker"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "INFERENCE_PORT": "99999"})
    assert run.returncode == 2 and "INFERENCE_PORT" in run.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_unavailable_device_falls_back_to_cpu(demo):
    """DEVICE=cuda on a machine without a GPU warns and serves on the CPU."""
    worker = serve_demo(demo, "--device", "cuda")
    try:
        assert worker.get("/health")[1]["device"] == "cpu"
        assert any("falling back to cpu" in line for line in worker.lines)
    finally:
        assert worker.stop() == 0


def test_flags_mirror_environment_variables():
    """Each CLI flag is its environment variable's name (without INFERENCE_), lower-case with dashes."""
    from inference_worker.__main__ import build_parser
    from inference_worker.config import Settings

    flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    expected = {"--" + Settings.env_name(f).removeprefix("INFERENCE_").lower().replace("_", "-")
                for f in Settings.model_fields}
    assert flags == expected
