"""make demo's launcher: worker + playground up, both URLs printed, Ctrl-C stops both and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx2

from tools.s3server import free_ports

ROOT = Path(__file__).resolve().parent.parent


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except OSError:
        return None


def test_demo_stack_starts_both_and_stops_cleanly(demo):
    """python -m tools.stack --demo serves the worker and the playground, prints both URLs, and stops on Ctrl-C."""
    worker_port, playground_port, http_port = free_ports(3)
    env = {**os.environ, "INFERENCE_DEMO_DIR": str(demo.root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.stack", "--demo", "--worker-port", str(worker_port),
         "--playground-port", str(playground_port), "--http-port", str(http_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops both" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(180), "".join(lines)
        out = "".join(lines)
        assert f"ws://localhost:{worker_port}" in out and f"http://localhost:{playground_port}" in out
        assert "meaningless" in out
        # The banner tells how to reach the demo's own adapter store (not ./adapter_store) with the right python.
        exe = Path(sys.executable)
        py = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)  # as typed from the checkout
        assert f"  {py} -m adapters --demo list" in out and str(demo.store_dir) in out
        assert status(f"http://127.0.0.1:{worker_port}/ready") == 200
        # The HTTP API's URL, and a curl line that works as printed: the sample diagram it names is there.
        assert f"http://localhost:{http_port}/v1" in out and f"http://localhost:{http_port}/docs" in out
        match = re.search(r'curl -s -X POST (\S+)/infer -F "file=@([^"]+)" -F max_tokens=32', out)
        assert match and match.group(1) == f"http://localhost:{http_port}", out
        sample = Path(match.group(2))
        assert sample.parent == demo.root and sample.read_bytes().startswith(b"\x89PNG")
        reply = httpx2.post(f"http://127.0.0.1:{http_port}/infer", files={"file": (sample.name, sample.read_bytes())},
                            data={"max_tokens": "32"}, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["metadata"]["usage"]["completion_tokens"] >= 1
        assert status(f"http://127.0.0.1:{playground_port}/_stcore/health") == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    urls = (f"http://127.0.0.1:{worker_port}/health", f"http://127.0.0.1:{playground_port}/_stcore/health",
            f"http://127.0.0.1:{http_port}/health")
    deadline = time.monotonic() + 10
    while any(status(u) for u in urls) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [status(u) for u in urls] == [None, None, None], "both processes stopped"
    assert "stopped" in "".join(lines)
