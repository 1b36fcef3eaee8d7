"""The local stack without Docker: the worker and the playground as two processes, stopped together.

    python -m tools.stack --demo                       # make demo: offline demo model, no network
    python -m tools.stack --model Qwen/Qwen3-VL-2B-Instruct   # make stack MODEL=...: a real model (+ MINIO_* env)

Starts the worker, waits until it is ready, starts the playground pointed at it, prints both URLs, and on Ctrl-C
(or SIGTERM) stops both — the worker gracefully — and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float, stop: list[bool]) -> None:
    deadline = time.monotonic() + timeout
    while not _ready(url):
        if stop[0]:
            raise KeyboardInterrupt
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} was not ready after {timeout:.0f} s ({url})")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes] | None, name: str, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop in {timeout:.0f} s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def _python() -> str:
    """This interpreter as a command to type here: ``.venv/bin/python`` rather than a bare ``python``."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def _demo_notes(http: str | None) -> str:
    from adapters.config import demo_store_dir

    py = _python()
    notes = (
        "  demo mode: random weights, the model's output is meaningless\n"
        f"  adapters    {py} -m adapters --demo list   (the demo's store, {demo_store_dir()})\n"
        f"              {py} -m adapters --demo push DIR NAME   publishes one the running worker can load\n"
    )
    if http is not None:
        sample = _write_sample()
        notes += f"  try         curl -s -X POST {http}/infer -F \"file=@{sample}\" -F max_tokens=32\n"
    return notes


def _write_sample() -> Path:
    """The playground's sample diagram as a PNG in the demo's directory: something to send to /infer at once."""
    from inference_worker.config import Settings
    from playground.images import sample_diagram

    path = Settings().demo_dir / "sample-diagram.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample_diagram().data)
    return path


def _vllm_worker(env: dict[str, str], *, demo: bool) -> tuple[str, dict[str, str]]:
    """INFERENCE_ENGINE=vllm: the worker runs in the vLLM venv (VLLM_VENV, default .venv-vllm; make venv-vllm), with
    this checkout on its path. The demo is built here first (its builder needs PEFT, which that venv lacks)."""
    venv = Path(env.get("VLLM_VENV") or ROOT / ".venv-vllm")
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"INFERENCE_ENGINE=vllm needs the vLLM venv ({venv}): run make venv-vllm")
    if demo:
        from checkpoints.demo import ensure_demo
        from inference_worker.config import Settings

        ensure_demo(Settings().demo_dir)
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return str(python), {**env, "PYTHONPATH": path, "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="serve the offline demo model (meaningless output)")
    source.add_argument("--model", help="hub id or local directory of the model to serve")
    parser.add_argument("--host", default="127.0.0.1", help="interface for both servers (default 127.0.0.1)")
    parser.add_argument("--worker-port", type=int, default=int(os.environ.get("INFERENCE_PORT", 8765)))
    parser.add_argument("--http-port", default=os.environ.get("HTTP_PORT", "8000"),
                        help="the worker's HTTP API port (/infer, OpenAI-compatible /v1, /docs); off: none")
    parser.add_argument("--playground-port", type=int, default=int(os.environ.get("PLAYGROUND_PORT", 8501)))
    parser.add_argument("--ready-timeout", type=float, default=1800, help="seconds to wait for the model to load")
    args = parser.parse_args(argv)

    stop = [False]

    def request_stop(signum: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    worker_python = sys.executable
    if os.environ.get("INFERENCE_ENGINE") == "vllm":
        worker_python, env = _vllm_worker(env, demo=args.demo)
    worker_cmd = [worker_python, "-m", "inference_worker", "--host", args.host, "--port", str(args.worker_port),
                  "--http-port", str(args.http_port)]
    worker_cmd += ["--demo"] if args.demo else ["--model-name", args.model]
    if "SHUTDOWN_NOTICE_S" not in os.environ:  # no load balancer in front: Ctrl-C stops at once
        worker_cmd += ["--shutdown-notice-s", "0"]
    worker = playground = None
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    ws_url = f"ws://{host}:{args.worker_port}"
    from inference_worker.config import is_off

    http_url = None if is_off(args.http_port) else f"http://{host}:{args.http_port}"
    try:
        print(f"starting the worker ({'demo model' if args.demo else args.model}) …", flush=True)
        worker = subprocess.Popen(worker_cmd, cwd=ROOT, env=env, start_new_session=True)
        _wait(f"http://127.0.0.1:{args.worker_port}/ready", worker, "the worker", args.ready_timeout, stop)
        playground = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "playground" / "app.py"),
             "--server.address", args.host, "--server.port", str(args.playground_port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env={**env, "INFERENCE_WS_URL": f"ws://127.0.0.1:{args.worker_port}"},
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        _wait(f"http://127.0.0.1:{args.playground_port}/_stcore/health", playground, "the playground", 120, stop)
        print(
            "\n"
            f"  worker      {ws_url}   (HTTP: http://{host}:{args.worker_port}/health, /ready, /metrics)\n"
            + (f"  HTTP API    {http_url}   (/infer, OpenAI-compatible {http_url}/v1, docs {http_url}/docs)\n"
               if http_url else "")
            + f"  playground  http://{host}:{args.playground_port}\n"
            + (_demo_notes(http_url) if args.demo else "")
            + "\n  Ctrl-C stops both.\n",
            flush=True,
        )
        while not stop[0]:
            for proc, name in ((worker, "the worker"), (playground, "the playground")):
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping …", flush=True)
        _stop(playground, "the playground", 10)
        _stop(worker, "the worker", 60)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
