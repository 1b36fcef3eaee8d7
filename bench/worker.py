"""The subject: a real worker (``python -m inference_worker`` in its own process, as deployed) and a real WebSocket
client (and, for figure 9, an HTTP client of its OpenAI-compatible API, streamed as server-sent events). The
clients run in the benchmark's process; the worker's RSS, ``/metrics`` and ``/ready`` are read from outside, as an
operator would.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from playground.client import UNSET, PlaygroundError, user_message
from playground.client import WorkerClient as AsyncWorkerClient
from wire.protocol import AdapterLoaded, AdapterUnloaded, Done, Status

from .common import BenchError, Request, Trial

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


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
    # The HTTP API (HTTP_PORT) on a free port of its own; off by default: the worker's default port is 8000, and two
    # workers of the benchmark (or one beside a deployment on this machine) would collide on it.
    http_api: bool = False


class _Launched:
    """A process of the benchmark's, its output in a log file; stopped with SIGTERM like a deployment, killed when it
    has not exited ``stop_grace_s`` later."""

    stop_grace_s = 60.0

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def _launch(self, args: list[str], cwd: Path, env: dict[str, str], *, own_session: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:  # a second start would orphan the first process
            raise BenchError(f"{args[2]} is already running (pid {self.proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=own_session)

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def _kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc.wait(10)


class WorkerProcess(_Launched):
    """``python -m inference_worker`` on a free loopback port."""

    def __init__(self, config: WorkerConfig, log_path: Path) -> None:
        super().__init__(log_path)
        self.config = config
        self.port = free_port()
        self.api_port: int | None = None  # the HTTP API's port (WorkerConfig.http_api), None when it is off
        if config.http_api:
            while self.api_port is None or self.api_port == self.port:
                self.api_port = free_port()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        """The WebSocket port's own HTTP routes (``/health``, ``/ready``, ``/metrics``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        """The HTTP API's base URL (``/v1/chat/completions`` …); only with ``WorkerConfig.http_api``."""
        if self.api_port is None:
            raise BenchError("this worker was started without its HTTP API (WorkerConfig.http_api)")
        return f"http://127.0.0.1:{self.api_port}"

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
        if self.api_port is not None and c.source_dir == ROOT:  # this checkout's worker knows the flag
            args += ["--http-port", str(self.api_port)]
        # Settings newer than a --compare-ref worker go in the environment (an older worker ignores them; it would
        # refuse an unknown flag). HTTP_PORT is always set: its default, 8000, would be bound by every worker.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
               "SHUTDOWN_NOTICE_S": "0",  # no load balancer to give notice to
               "HTTP_PORT": str(self.api_port) if self.api_port is not None else "off",
               **c.s3, **c.env}
        if c.python is not None:  # another venv runs this checkout
            env["PYTHONPATH"] = str(c.source_dir)
        self._launch(args, c.source_dir, env)
        assert self.proc is not None
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

    def sse_client(self) -> SseClient:
        return SseClient(self.api)


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
    """The benchmark's synchronous handle on :class:`playground.client.WorkerClient` (the project's one client).

    The benchmarks drive clients from threads, side by side; each handle runs its async client on an event loop of its
    own, in a thread. Times are taken where the client library hands over each token, so every worker (the current
    one, another engine's, a ``--compare-ref`` one) is timed by the same code. A ``--compare-ref`` worker older than
    ``request_id`` refuses every message but ``generate``, which carries none: figure 1 only generates on it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-client", daemon=True)
        self._thread.start()
        self.client = AsyncWorkerClient(url, open_timeout=60, reply_timeout=600)
        try:
            self._call(self.client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except PlaygroundError as exc:
            raise BenchError(f"the worker at {self.url}: {exc.code}: {exc.message}") from None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.client.close(), 30)
        finally:
            self._stop_loop()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_adapter(self, ref: str | None, timeout: float = 600) -> AdapterLoaded | AdapterUnloaded:
        return self._call(self.client.load_adapter(ref), timeout)

    def status(self) -> Status:
        return self._call(self.client.status())

    def generate(self, request: Request, *, adapter: Any = UNSET, switch_to: str | None = None,
                 started: float | None = None) -> Trial:
        """Send ``generate`` (after a pipelined ``load_adapter`` when ``switch_to`` is given) and stream it to the end.

        ``adapter``: the per-request ``adapter`` field (UNSET: the connection's adapter). Times count from ``started``
        (default: now).
        """
        t0 = time.perf_counter() if started is None else started
        return self._call(self._generate(request, adapter, switch_to, t0))

    async def _generate(self, request: Request, adapter: Any, switch_to: str | None, t0: float) -> Trial:
        load = await self.client.start_load(switch_to) if switch_to is not None else None
        first_piece: float | None = None
        pieces: list[str] = []
        done: Done | None = None
        end = 0.0
        async for item in self.client.generate([user_message(request.text, image=request.image_png)],
                                               max_tokens=request.max_tokens, temperature=0, adapter=adapter):
            if isinstance(item, Done):
                done, end = item, time.perf_counter()
            else:
                if first_piece is None:
                    first_piece = time.perf_counter()
                pieces.append(item)
        if load is not None:
            async for _ in load:  # its adapter_loaded came before the tokens; raises if the switch failed
                pass
        assert done is not None
        text = "".join(pieces)
        if text != done.content:
            raise BenchError("the streamed tokens do not add up to done.content")
        timings, usage = done.timings, done.usage
        return Trial(
            ttft_piece_s=first_piece - t0 if first_piece is not None else None,
            ttft_token_s=timings.ttft_ms / 1000 if timings.ttft_ms is not None else None,
            end_s=end - t0,
            tokens=usage.completion_tokens,
            prompt_tokens=usage.prompt_tokens,
            text=text,
            decode_tps_token=timings.tokens_per_s,
            extra={"queue_ms": timings.queue_ms, "server_total_ms": timings.total_ms, "adapter": done.adapter},
        )


class SseClient:
    """A streaming HTTP client of the worker's OpenAI-compatible API (figure 9): ``POST /v1/chat/completions`` with
    ``stream: true`` (and the usage chunk) on the base model, the server-sent events read to the end of the body.

    Built to cost no more than :class:`WorkerClient` per token, so that the two protocols are compared and not two
    client libraries: the standard library's ``http.client`` on one keep-alive connection (TCP_NODELAY, the request
    in one write), read on the calling thread, each ``data:`` event's JSON parsed where it arrives (the WebSocket
    client parses each frame). Measured on one worker, tiny model, 256-token answers: 0.09 ms of the benchmark's CPU
    per token, the WebSocket client 0.15 ms, an ``httpx2`` async client 0.28 ms. The connection is reused while it is
    younger than ``keepalive_s`` since its last reply (the worker closes idle ones after 5 s), as a pooling client
    does; each trial records whether it was (``extra["reused"]``).
    """

    keepalive_s = 4.0

    def __init__(self, base_url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self.url = base_url
        self.host, self.port = parts.hostname, parts.port
        self.conn: http.client.HTTPConnection | None = None
        self.last_reply = 0.0
        self.model = self._base_model()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection if it is still fresh, else a new one (connected by the request); reused?"""
        if self.conn is not None and time.monotonic() - self.last_reply < self.keepalive_s:
            return self.conn, True
        self.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        return self.conn, False

    def _base_model(self) -> str:
        """The base model's id (``GET /v1/models``: the entry without a parent)."""
        conn, _ = self._connection()
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        body = r.read()
        self.last_reply = time.monotonic()
        if r.status != 200:
            raise BenchError(f"GET {self.url}/v1/models: {r.status} {body[:500]!r}")
        for entry in json.loads(body)["data"]:
            if entry.get("parent") is None:
                return str(entry["id"])
        raise BenchError(f"GET {self.url}/v1/models lists no base model")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self, request: Request) -> dict[str, Any]:
        """The request as a chat completion: the WebSocket client's message (image part first, then the text)."""
        from playground.client.messages import image_part

        content: list[dict[str, Any]] = []
        if request.image_png is not None:
            content.append({"type": "image_url", "image_url": {"url": image_part(request.image_png)["image"]}})
        content.append({"type": "text", "text": request.text})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": request.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}

    def generate(self, request: Request, *, started: float | None = None) -> Trial:
        """Stream one greedy completion to the end of the body; times count from ``started`` (default: now)."""
        t0 = time.perf_counter() if started is None else started
        payload = json.dumps(self.body(request), ensure_ascii=False).encode()
        conn, reused = self._connection()
        try:
            conn.request("POST", "/v1/chat/completions", body=payload,
                         headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
            r = conn.getresponse()
            if r.status != 200:
                raise BenchError(f"POST {self.url}/v1/chat/completions: {r.status} "
                                 f"{r.read().decode(errors='replace')[:500]}")
            first_piece: float | None = None
            pieces: list[str] = []
            usage: dict[str, Any] | None = None
            finish: str | None = None
            end: float | None = None
            while True:  # to the end of the body (not only to [DONE]): the connection stays usable
                line = r.readline()
                if not line:
                    break
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    end = time.perf_counter()
                    continue
                event = json.loads(data)
                if "error" in event:
                    raise BenchError(f"the worker at {self.url}: {event['error']}")
                for choice in event["choices"]:
                    piece = choice["delta"].get("content")
                    if piece:
                        if first_piece is None:
                            first_piece = time.perf_counter()
                        pieces.append(piece)
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    usage = event["usage"]
        except BaseException:
            self.close()
            raise
        self.last_reply = time.monotonic()
        if end is None or usage is None or finish is None:
            raise BenchError(f"the stream from {self.url} ended without [DONE], the usage or a finish_reason")
        return Trial(
            ttft_piece_s=first_piece - t0 if first_piece is not None else None,
            ttft_token_s=None,  # the SSE stream carries no server timings
            end_s=end - t0,
            tokens=int(usage["completion_tokens"]),
            prompt_tokens=int(usage["prompt_tokens"]),
            text="".join(pieces),
            decode_tps_token=None,
            extra={"finish_reason": finish, "reused": reused},
        )


class RayDeployment(_Launched):
    """``python -m inference_worker.ray`` with ``RAY_ADDRESS=local``: a one-machine Ray cluster of its own with the
    replicas deployed; SIGTERM deletes the application and stops the cluster. ``address`` is for fronts."""

    stop_grace_s = 90.0

    def __init__(self, config: WorkerConfig, log_path: Path, temp_dir: Path, replicas: int = 1) -> None:
        super().__init__(log_path)
        self.config = config
        self.temp_dir = temp_dir
        self.replicas = replicas
        self.address: str | None = None

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
               "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(self.temp_dir), "HTTP_PORT": "off",
               "PYTHONPATH": os.pathsep.join(x for x in (str(c.source_dir), os.environ.get("PYTHONPATH")) if x),
               **c.env}
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._launch(args, c.source_dir, env, own_session=True)
        assert self.proc is not None
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

    def _kill(self) -> None:  # the cluster's processes are in the deployment's session: end them all
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
