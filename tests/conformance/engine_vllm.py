"""The vLLM engine: the worker runs in the vLLM venv (vLLM pins its own torch), so it is a subprocess here.

``python -m inference_worker`` with INFERENCE_ENGINE=vllm under the vLLM venv's interpreter (VLLM_VENV, default
./.venv-vllm; ``make venv-vllm`` builds it, ``.ci/run`` sets VLLM_VENV to its cached copy), this checkout on
PYTHONPATH, the conformance settings as environment variables, ports 0 (INFERENCE_PORT and HTTP_PORT: both ports
are read from its log). Two LoRA slots (VLLM_MAX_LORAS=2): demo-a and demo-b fill them, which is when vLLM's CPU path
gave base rows an adapter.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inference_worker.config import Settings

from .targets import StartContext, Target

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600  # vLLM's engine process starts in 20-90 s on these 2-core machines
LISTENING = re.compile(r"listening on ws://[^:]+:(\d+)")
HTTP_API = re.compile(r"HTTP API on http://[^:]+:(\d+)")


def venv_python() -> Path:
    return Path(os.environ.get("VLLM_VENV") or ROOT / ".venv-vllm") / "bin" / "python"


def missing(ctx: StartContext) -> str | None:
    python = venv_python()
    if not python.exists():
        return f"no vLLM venv at {python.parent.parent} (make venv-vllm)"
    return None


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The settings that differ from their defaults, as the worker's environment variables."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value: Any = getattr(settings, name)
        if value == field.get_default(call_default_factory=True) or value is None:
            continue
        if isinstance(value, list):
            value = os.pathsep.join(str(v) for v in value)
        env[Settings.env_name(name)] = str(value)
    env.update(extra)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    return {**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": base.get("VLLM_CPU_KVCACHE_SPACE", "1"), "INFERENCE_ENGINE": "vllm",
            **settings_env(settings), **extra}


@contextmanager
def run_worker(settings: Settings, log_path: Path, **extra: str) -> Iterator[str]:
    """A vLLM worker subprocess with ``settings``; yields its ``host:port`` once /ready answers 200; stops it (and
    vLLM's engine process: the worker's process group) on exit. :func:`api_address` reads its HTTP API's."""
    env = worker_env(settings, **extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(venv_python()), "-m", "inference_worker"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = _wait_ready(proc, log_path)
        yield address
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM worker exited with {proc.returncode}:\n{_tail(log_path)}")
        if port is None:
            match = LISTENING.search(log_path.read_text(errors="replace"))
            port = match.group(1) if match else None
        if port is not None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    if r.status == 200:
                        return f"127.0.0.1:{port}"
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.5)
    raise RuntimeError(f"the vLLM worker was not ready after {READY_TIMEOUT_S} s:\n{_tail(log_path)}")


def api_address(log_path: Path) -> str:
    """The ``host:port`` of a ready worker's HTTP API, from its log (logged before the model loads, so before
    /ready answers 200)."""
    match = HTTP_API.search(log_path.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"the vLLM worker logged no HTTP API address (is HTTP_PORT off?):\n{_tail(log_path)}")
    return f"127.0.0.1:{match.group(1)}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of the group (vLLM's engine process if the worker died without stopping it)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def start(ctx: StartContext) -> Iterator[Target]:
    # MAX_NEW_TOKENS 16000: vLLM writes the tiny model's 2000 tokens in a few seconds, which a cancel or a second
    # message racing it sometimes lost; the tests that need a long generation ask for target.max_new_tokens.
    settings = ctx.settings(engine="vllm", shutdown_notice_s=0, vllm_max_loras=2, max_new_tokens=16000)
    log_path = ctx.tmp.mktemp("vllm-worker") / "worker.log"
    with run_worker(settings, log_path) as address:
        yield Target(engine="vllm", url=f"ws://{address}", http=f"http://{address}",
                     api=f"http://{api_address(log_path)}",
                     max_new_tokens=settings.max_new_tokens, max_queue_size=settings.max_queue_size,
                     vision_adapters=False, infer_system_prompt=settings.infer_system_prompt)
