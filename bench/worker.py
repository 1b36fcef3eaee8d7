"""The subject: a real worker (``python -m inference_worker`` in its own process, as deployed) and a real WebSocket
client. The client runs in the benchmark's process; the worker's RSS, ``/metrics`` and ``/ready`` are read from
outside, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .common import BenchError, Request, Trial

ROOT = Path(__file__).resolve().parent.parent
UNSET: Any = object()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerConfig:
    model_dir: Path
    device: str = "cpu"
    dtype: str = "float32"
    store_dir: Path | None = None
    max_loaded_adapters: int = 8
    max_batch_rows: int | None = None
    s3: dict[str, str] = field(default_factory=dict)  # MINIO_* variables (endpoint, keys, bucket)
    cache_dir: Path | None = None  # ADAPTER_CACHE_DIR
    env: dict[str, str] = field(default_factory=dict)  # more settings, as environment variables
    source_dir: Path = ROOT  # the checkout whose worker runs (another one: a previous version, side by side)
    python: Path | None = None  # the interpreter (another venv's, e.g. the vLLM one; None: this one)


class WorkerProcess:
    """``python -m inference_worker`` on a free loopback port; stopped with SIGTERM like a deployment."""

    def __init__(self, config: WorkerConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600) -> WorkerProcess:
        c = self.config
        args = [
            str(c.python or sys.executable), "-m", "inference_worker",
            "--model-name", str(c.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--device", c.device, "--torch-dtype", c.dtype,
            "--max-loaded-adapters", str(c.max_loaded_adapters),
        ]
        if c.max_batch_rows is not None:  # None: the worker's own default for the device
            args += ["--max-batch-rows", str(c.max_batch_rows)]
        if c.store_dir is not None:
            args += ["--adapter-store-dir", str(c.store_dir)]
        if c.cache_dir is not None:
            args += ["--adapter-cache-dir", str(c.cache_dir)]
        # Settings newer than a --compare-ref worker go in the environment (an older worker ignores them; it would
        # refuse an unknown flag).
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
               "SHUTDOWN_NOTICE_S": "0",  # no load balancer to give notice to
               **c.s3, **c.env}
        if c.python is not None:  # another venv runs this checkout
            env["PYTHONPATH"] = str(c.source_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, cwd=c.source_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the worker exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(self.http + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BenchError(f"the worker was not ready within {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observation ------------------------------------------------------------------------------------------
    def rss(self) -> int:
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}``."""
        with urllib.request.urlopen(self.http + "/metrics", timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        return values

    def client(self) -> WorkerClient:
        return WorkerClient(self.url)


def stage_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds added to each ``inference_adapter_load_seconds{stage=…}`` histogram between two scrapes."""
    out = {}
    pattern = re.compile(r'^inference_adapter_load_seconds_sum\{stage="([a-z_]+)"\}$')
    for key, value in after.items():
        m = pattern.match(key)
        if m:
            out[m.group(1)] = value - before.get(key, 0.0)
    return out


class WorkerClient:
    """A plain WebSocket client of the worker's protocol (JSON text frames), timing what it receives."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=60, max_size=None, ping_interval=None)
        self._n = 0

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, timeout: float = 600) -> dict[str, Any]:
        frame = self.ws.recv(timeout)
        message: dict[str, Any] = json.loads(frame)
        return message

    def load_adapter(self, ref: str | None, timeout: float = 600) -> dict[str, Any]:
        self.ws.send(json.dumps({"type": "load_adapter", "adapter_path": ref}))
        while True:
            m = self._recv(timeout)
            if m["type"] in ("adapter_loaded", "adapter_unloaded"):
                return m
            if m["type"] == "error":
                raise BenchError(f"load_adapter {ref!r}: {m['code']}: {m['message']}")

    def status(self) -> dict[str, Any]:
        self.ws.send(json.dumps({"type": "status"}))
        while True:
            m = self._recv()
            if m["type"] == "status":
                return m

    def generate(self, request: Request, *, adapter: Any = UNSET, switch_to: str | None = None,
                 started: float | None = None) -> Trial:
        """Send ``generate`` (after a pipelined ``load_adapter`` when ``switch_to`` is given) and stream it to the end.

        ``adapter``: the per-request ``adapter`` field (UNSET: the connection's adapter).
        """
        self._n += 1
        session = f"b{self._n}"
        content: list[dict[str, Any]] = []
        url = request.data_url()
        if url is not None:
            content.append({"type": "image", "image": url})
        content.append({"type": "text", "text": request.text})
        message: dict[str, Any] = {
            "type": "generate", "session_id": session, "messages": [{"role": "user", "content": content}],
            "max_tokens": request.max_tokens, "temperature": 0,
        }
        if adapter is not UNSET:
            message["adapter"] = adapter
        t0 = time.perf_counter() if started is None else started
        if switch_to is not None:
            self.ws.send(json.dumps({"type": "load_adapter", "adapter_path": switch_to}))
        self.ws.send(json.dumps(message))
        first_piece: float | None = None
        pieces = []
        while True:
            m = self._recv()
            kind = m["type"]
            if kind == "token" and m.get("session_id") == session:
                if first_piece is None:
                    first_piece = time.perf_counter()
                pieces.append(m["content"])
            elif kind == "done" and m.get("session_id") == session:
                end = time.perf_counter()
                break
            elif kind == "error":
                raise BenchError(f"worker error: {m.get('code')}: {m.get('message')}")
        timings = m.get("timings") or {}
        usage = m.get("usage") or {}
        text = "".join(pieces)
        if text != m.get("content"):
            raise BenchError("the streamed tokens do not add up to done.content")
        ttft_ms = timings.get("ttft_ms")
        return Trial(
            ttft_piece_s=first_piece - t0 if first_piece is not None else None,
            ttft_token_s=ttft_ms / 1000 if ttft_ms is not None else None,
            end_s=end - t0,
            tokens=int(usage.get("completion_tokens", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            text=text,
            decode_tps_token=timings.get("tokens_per_s"),
            extra={"queue_ms": timings.get("queue_ms"), "server_total_ms": timings.get("total_ms"),
                   "adapter": m.get("adapter")},
        )


class RayDeployment:
    """``python -m inference_worker.ray`` with ``RAY_ADDRESS=local``: a one-machine Ray cluster of its own with the
    replicas deployed; SIGTERM deletes the application and stops the cluster. ``address`` is for fronts."""

    def __init__(self, config: WorkerConfig, log_path: Path, temp_dir: Path, replicas: int = 1) -> None:
        self.config = config
        self.log_path = log_path
        self.temp_dir = temp_dir
        self.replicas = replicas
        self.address: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> RayDeployment:
        c = self.config
        cpus = os.cpu_count() or 1
        args = [
            sys.executable, "-m", "inference_worker.ray",
            "--model-name", str(c.model_dir), "--log-level", "info", "--device", c.device, "--torch-dtype", c.dtype,
            "--max-loaded-adapters", str(c.max_loaded_adapters), "--ray-address", "local",
            "--ray-app-name", "bench", "--ray-replicas", str(self.replicas),
            # every core to the one replica, as the in-process worker has them (Ray sets its OMP_NUM_THREADS)
            "--ray-cpus-per-replica", str(cpus / self.replicas), "--ray-status-period-s", "1",
        ]
        if c.max_batch_rows is not None:
            args += ["--max-batch-rows", str(c.max_batch_rows)]
        if c.store_dir is not None:
            args += ["--adapter-store-dir", str(c.store_dir)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
               "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(self.temp_dir),
               "PYTHONPATH": os.pathsep.join(x for x in (str(c.source_dir), os.environ.get("PYTHONPATH")) if x),
               **c.env}
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, cwd=c.source_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the Ray deployment exited with {self.proc.returncode}:\n{self._log_tail()}")
            text = self._log_tail(100_000)
            found = re.search(r"cluster address (\S+)", text)
            if found and "application 'bench' running" in text:
                self.address = found.group(1)
                return self
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"the Ray deployment was not running within {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:  # the cluster's processes are in its session: end them all
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
