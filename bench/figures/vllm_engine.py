"""Figure 7, the vLLM engine: the transformers engine, the vLLM engine and plain vLLM ``AsyncLLM`` without the
worker (bench/vllm_plain.py), 1 and 8 clients: aggregate tokens/s and time to first token (needs make venv-vllm)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..common import BenchError, Trial
from ..report import Row
from ..worker import WorkerConfig, WorkerProcess
from .measure import delta_row, ratio_row, threaded
from .target import MIX, Run, Target, say


def vllm_python() -> Path:
    """The vLLM venv's interpreter (VLLM_VENV, default .venv-vllm; make venv-vllm)."""
    from ..worker import ROOT

    return Path(os.environ.get("VLLM_VENV") or ROOT / ".venv-vllm") / "bin" / "python"


def figure7(run: Run, t: Target) -> list[Row]:
    """The transformers engine, the vLLM engine and plain vLLM ``AsyncLLM`` (no worker in front), 1 and 8 clients on
    a mix of three adapters and the base: aggregate tokens/s and time to first token.

    One after another (each holds the model; three at once would not fit beside each other on 2 cores): the
    transformers worker, the vLLM worker, then plain AsyncLLM in the vLLM venv with the worker's own engine arguments
    and prompts (bench/vllm_plain.py). Every engine runs with its defaults (vLLM: prefix caching; transformers: its
    vision cache). Time to first token is to the first text piece a client receives, for all three.
    """
    import json
    import subprocess

    from ..worker import ROOT

    o = run.options
    python = vllm_python()
    if not python.exists():
        raise BenchError(f"figure 7 needs the vLLM venv ({python.parent.parent}): make venv-vllm")
    req = t.request(o.concurrency_tokens)
    levels = [1, 8]
    rows_per_batch = o.max_batch_rows or 8
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}

    def worker_rounds(name: str, worker: WorkerProcess) -> None:
        conns = [worker.client() for _ in range(max(levels))]
        try:
            for i, c in enumerate(conns):
                if MIX[i % len(MIX)] is not None:
                    c.load_adapter(MIX[i % len(MIX)])

            def one_round(clients: int) -> dict[str, Any]:
                def client_fn(i: int) -> Callable[[], list[Trial]]:
                    return lambda: [conns[i].generate(req) for _ in range(o.requests_per_client)]

                wall, out = threaded([client_fn(i) for i in range(clients)])
                flat = [(MIX[i % len(MIX)], x) for i, trials in enumerate(out) for x in trials]
                return {"wall": wall, "tokens": sum(x.tokens for _, x in flat),
                        "ttft": [x.ttft_piece_s for _, x in flat], "texts": [(a, x.text) for a, x in flat]}

            for _ in range(max(1, o.warmup)):
                one_round(max(levels))
            results[name] = {c: [one_round(c) for _ in range(o.concurrency_trials)] for c in levels}
        finally:
            for c in conns:
                c.close()

    say(f"figure 7, {t.label}: the transformers engine")
    t.stop_worker()
    worker_rounds("transformers", t.worker())
    t.stop_worker()

    say(f"figure 7, {t.label}: the vLLM engine (starting vLLM)")
    config = WorkerConfig(t.model_dir, device="cpu", dtype=t.dtype, store_dir=t.store_dir(), max_loaded_adapters=8,
                          max_batch_rows=rows_per_batch, python=python,
                          env={"INFERENCE_ENGINE": "vllm", "VLLM_MAX_LORAS": "4",
                               "VLLM_MAX_LORA_RANK": str(o.rank), "VLLM_CPU_KVCACHE_SPACE": "1"})
    with WorkerProcess(config, run.logs / f"vllm-worker-{t.model_dir.name}.log") as worker:
        worker_rounds("vllm", worker)

    say(f"figure 7, {t.label}: plain vLLM AsyncLLM")
    image = run.tmp / "figure7.png"
    if req.image_png is not None:
        image.write_bytes(req.image_png)
    adapters = {name: str(path) for name, path in t.adapters().items() if name in MIX}
    cmd = [str(python), "-m", "bench.vllm_plain", "--model", str(t.model_dir), "--adapters", json.dumps(adapters),
           "--mix", ",".join(a or "" for a in MIX), "--prompt", req.text, "--tokens", str(req.max_tokens),
           "--clients", ",".join(map(str, levels)), "--requests-per-client", str(o.requests_per_client),
           "--trials", str(o.concurrency_trials), "--warmup", str(max(1, o.warmup)),
           "--max-batch-rows", str(rows_per_batch), "--max-loras", "4", "--max-lora-rank", str(o.rank)]
    if req.image_png is not None:
        cmd += ["--image", str(image)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = run.logs / f"vllm-plain-{t.model_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=3600)
    if done.returncode != 0:
        raise BenchError(f"bench.vllm_plain exited with {done.returncode} (log: {log})")
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    results["plain"] = {int(c): [{"wall": r["wall"], "tokens": r["tokens"], "ttft": [x["ttft"] for x in r["results"]],
                                  "texts": [(x["adapter"], x["text"]) for x in r["results"]]} for r in rounds]
                        for c, rounds in plain["levels"].items()}

    def rates(name: str, c: int) -> list[float | None]:
        return [r["tokens"] / r["wall"] for r in results[name][c]]

    def ttft_medians(name: str, c: int) -> list[float | None]:
        return [statistics.median([x for x in r["ttft"] if x is not None]) for r in results[name][c]]

    def texts(name: str) -> dict[str | None, set[str]]:
        out: dict[str | None, set[str]] = {}
        for rounds in results[name].values():
            for r in rounds:
                for a, text in r["texts"]:
                    out.setdefault(a, set()).add(text)
        return out

    same = texts("vllm") == texts("plain")
    same_tf = texts("vllm") == texts("transformers")
    note = (("vLLM engine and plain AsyncLLM write the same text per adapter" if same
             else "vLLM engine and plain AsyncLLM texts differ") +
            ("; the transformers engine the same too" if same_tf else "; the transformers engine's texts differ"))
    if not same:
        run.note(f"figure 7, {t.label}: {note}")
    rows: list[Row] = []
    for c in levels:
        who = f"{c} client{'s' if c > 1 else ''} × {o.requests_per_client} requests (3 adapters + base)"
        rows.append(ratio_row(7, f"{who}: aggregate tokens/s, vLLM engine ÷ plain vLLM AsyncLLM", t.label,
                              rates("vllm", c), rates("plain", c), "tok/s", target="≥ 0.95",
                              check=lambda r: r >= 0.95, note=note))
        rows.append(delta_row(7, f"{who}: time to first token (median of a round), vLLM engine − plain AsyncLLM",
                              t.label, ttft_medians("vllm", c), ttft_medians("plain", c), target="≤ +15 ms",
                              check=lambda d: d <= 15.0))
        rows.append(ratio_row(7, f"{who}: aggregate tokens/s, vLLM engine ÷ transformers engine", t.label,
                              rates("vllm", c), rates("transformers", c), "tok/s"))
        rows.append(delta_row(7, f"{who}: time to first token (median of a round), vLLM engine − transformers "
                              "engine", t.label, ttft_medians("vllm", c), ttft_medians("transformers", c)))
    rows[0].note += (f"; MAX_BATCH_ROWS={rows_per_batch}, {req.max_tokens} tokens per request, greedy, "
                     f"{o.concurrency_trials} rounds each, run one after another; vLLM {plain['start_s']:.0f} s to "
                     "start (plain)")
    return rows
