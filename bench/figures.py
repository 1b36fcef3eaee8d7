"""The figures. Each measures the worker (subject) beside the in-process baseline in the same run, trials
interleaved with the order reversed every trial (A B, B A, A B …) so that the machine's noise hits both.
"""

from __future__ import annotations

import gc
import importlib
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.protocol import AdapterLoaded

from .baseline import InProcess
from .common import PROMPT, SHORT_PROMPT, BenchError, Request, Trial, diagram_png
from .models import AdapterSpec, ModelCache, adapter_bytes, is_vision_model, parameter_count
from .report import Row
from .stats import delta, paired, quantile, ratio, summarize
from .worker import RayDeployment, WorkerClient, WorkerConfig, WorkerProcess, stage_seconds

log = logging.getLogger("bench")
ADAPTERS = ("bench-a", "bench-b", "bench-c", "bench-d")
MIX: tuple[str | None, ...] = ("bench-a", "bench-b", "bench-c", None)  # figure 4: three adapters and the base


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    sizes: list[str]
    model_dir: Path | None
    figures: list[int]
    trials: int
    tokens: int
    image_side: int
    swap_trials: int
    clients: list[int]
    requests_per_client: int
    concurrency_trials: int
    concurrency_tokens: int
    max_batch_rows: int | None  # None: the worker's default for the device
    cycles: int
    cold_trials: int
    cold_size: str | None
    device: str
    dtype: str | None
    cache_dir: Path
    out: Path
    warmup: int = 3
    lora_2b: bool = False  # figure 2 also on the 2B architecture (few trials, 4 tokens)
    rank: int = 16
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    mode: str = "custom"
    compare_ref: str | None = None  # a git ref whose worker figure 1 also measures, side by side (a previous version)


def size_dtype(size: str | None, device: str, model_dir: Path) -> str:
    """bfloat16 on CUDA; on CPU float32, except for checkpoints of a billion parameters or more (bfloat16)."""
    if device == "cuda":
        return "bfloat16"
    return "bfloat16" if parameter_count(model_dir) >= 1_000_000_000 else "float32"


def human_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


class Run:
    """State shared by the figures of one run: options, the model cache, a scratch directory, notes."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.cache = ModelCache(options.cache_dir)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.notes: list[str] = []
        self.logs = options.out / "logs"
        self.rows: list[Row] = []

    def previous_source(self) -> Path | None:
        """The checkout of ``--compare-ref`` (``git archive`` into the scratch directory, once), or None."""
        ref = self.options.compare_ref
        if ref is None:
            return None
        target = self.tmp / "previous"
        if not (target / "inference_worker").is_dir():
            import subprocess

            from .worker import ROOT

            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        return target

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class Target:
    """One model under test: its checkpoint, adapters, local store, baseline and worker (started lazily)."""

    def __init__(self, run: Run, model_dir: Path, label: str, size: str | None) -> None:
        self.run = run
        self.model_dir = model_dir
        self.size = size
        o = run.options
        self.dtype = o.dtype or size_dtype(size, o.device, model_dir)
        self.params = parameter_count(model_dir)
        self.label = f"{label} ({human_params(self.params)}, {self.dtype})"
        self.vision = is_vision_model(model_dir)
        self._adapters: dict[str, Path] | None = None
        self._store: Path | None = None
        self._baseline: InProcess | None = None
        self._worker: WorkerProcess | None = None
        self._previous: WorkerProcess | None = None
        self._alternative: WorkerProcess | None = None
        self._clients: list[WorkerClient] = []

    # ---- requests -----------------------------------------------------------------------------------------------
    def request(self, tokens: int) -> Request:
        """The figures' request: an image and a prompt for a vision model, the prompt alone for a text-only one."""
        image = diagram_png(self.run.options.image_side) if self.vision else None
        return Request(PROMPT, tokens, image)

    # ---- adapters -----------------------------------------------------------------------------------------------
    def adapters(self) -> dict[str, Path]:
        if self._adapters is None:
            specs = [AdapterSpec(name, seed=i + 1, rank=self.run.options.rank) for i, name in enumerate(ADAPTERS)]
            # PEFT writes them, except for checkpoints too big to copy in memory for each adapter.
            with_peft = self.params < 1_000_000_000
            self._adapters = self.run.cache.adapters(self.model_dir, specs, with_peft=with_peft)
        return self._adapters

    def store_dir(self) -> Path:
        if self._store is None:
            from adapters.local import LocalDirectoryStore

            self._store = self.run.tmp / f"store-{self.model_dir.name}"
            store = LocalDirectoryStore(self._store)
            for name, path in self.adapters().items():
                store.publish(name, path, replace=True)
        return self._store

    # ---- subject and baseline ----------------------------------------------------------------------------------
    def baseline(self) -> InProcess:
        if self._baseline is None:
            say(f"{self.label}: loading the in-process baseline (plain model + PEFT model with 3 adapters)")
            ip = InProcess(self.model_dir, device=self.run.options.device, dtype=self.dtype)
            ip.load_peft({name: self.adapters()[name] for name in ADAPTERS[:3]})
            self._baseline = ip
        return self._baseline

    def worker(self, env: dict[str, str] | None = None) -> WorkerProcess:
        """The worker (started on first use; ``env``: settings of a worker started now, for one figure)."""
        if self._worker is None:
            say(f"{self.label}: starting the worker" + (f" with {env}" if env else ""))
            o = self.run.options
            config = WorkerConfig(self.model_dir, device=o.device, dtype=self.dtype, store_dir=self.store_dir(),
                                  max_loaded_adapters=8, max_batch_rows=o.max_batch_rows, env=dict(env or {}))
            self._worker = WorkerProcess(config, self.run.logs / f"worker-{self.model_dir.name}.log").start()
        return self._worker

    def previous_worker(self) -> WorkerProcess | None:
        """The worker of ``--compare-ref`` on the same model and adapters, or None."""
        source = self.run.previous_source()
        if source is None:
            return None
        if self._previous is None:
            say(f"{self.label}: starting the previous worker ({self.run.options.compare_ref})")
            o = self.run.options
            config = WorkerConfig(self.model_dir, device=o.device, dtype=self.dtype, store_dir=self.store_dir(),
                                  max_loaded_adapters=8, source_dir=source)
            log = self.run.logs / f"previous-worker-{self.model_dir.name}.log"
            self._previous = WorkerProcess(config, log).start()
        return self._previous

    def alternative_worker(self, env: dict[str, str]) -> WorkerProcess:
        """A second worker with other settings, beside the default one, for a figure that compares the two."""
        if self._alternative is None:
            say(f"{self.label}: starting a second worker with {env}")
            o = self.run.options
            config = WorkerConfig(self.model_dir, device=o.device, dtype=self.dtype, store_dir=self.store_dir(),
                                  max_loaded_adapters=8, max_batch_rows=o.max_batch_rows, env=dict(env))
            log = self.run.logs / f"alternative-worker-{self.model_dir.name}.log"
            self._alternative = WorkerProcess(config, log).start()
        return self._alternative

    def client(self, adapter: str | None = None, worker: WorkerProcess | None = None) -> WorkerClient:
        c = (worker or self.worker()).client()
        self._clients.append(c)
        if adapter is not None:
            c.load_adapter(adapter)
        return c

    def stop_worker(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()
        for worker in (self._worker, self._previous, self._alternative):
            if worker is not None:
                worker.stop()
        self._worker = self._previous = self._alternative = None

    def close(self) -> None:
        self.stop_worker()
        self._baseline = None
        gc.collect()


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def interleave(run: Run, n: int, subjects: dict[str, Callable[[], Any]], label: str,
               warmup: int | None = None) -> dict[str, list[Any]]:
    """Run every subject ``n`` times, the order reversed on every other trial, after untimed warm-up runs.

    The warm-up matters for the worker: its first requests after start are slower (lazy imports, the generation
    thread's first forward passes), and a deployment serves in the steady state.
    """
    order = list(subjects)
    for _ in range(run.options.warmup if warmup is None else warmup):
        for key in order:
            subjects[key]()
    out: dict[str, list[Any]] = {k: [] for k in order}
    for i in range(n):
        for key in order if i % 2 == 0 else order[::-1]:
            out[key].append(subjects[key]())
        say(f"{label}: trial {i + 1}/{n}")
    return out


def ratio_row(figure: int, measurement: str, model: str, subject: Sequence[float | None],
              baseline: Sequence[float | None], unit: str, *, target: str | None = None,
              check: Callable[[float], bool] | None = None, note: str = "", scale: float = 1.0) -> Row:
    result = summarize(paired(subject, baseline, ratio))
    return Row(figure, measurement, model, result, "×", summarize(subject, scale), summarize(baseline, scale), unit,
               target=target, met=check(result.median) if result and check else None, note=note)


def delta_row(figure: int, measurement: str, model: str, subject_s: Sequence[float | None],
              baseline_s: Sequence[float | None], *, target: str | None = None,
              check: Callable[[float], bool] | None = None, note: str = "") -> Row:
    ms = 1000.0
    subj = [x * ms if x is not None else None for x in subject_s]
    base = [x * ms if x is not None else None for x in baseline_s]
    result = summarize(paired(subj, base, delta))
    return Row(figure, measurement, model, result, "ms Δ", summarize(subj), summarize(base), "ms",
               target=target, met=check(result.median) if result and check else None, note=note)


def attr(trials: Sequence[Trial], name: str) -> list[float | None]:
    return [getattr(t, name) for t in trials]


def same_outputs(a: Sequence[Trial], b: Sequence[Trial]) -> tuple[bool, str]:
    mismatched = sum(1 for x, y in zip(a, b) if x.text != y.text or x.tokens != y.tokens)
    if mismatched:
        return False, f"outputs differ in {mismatched}/{len(a)} trials"
    return True, "outputs identical"


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": quantile(values, 0.5), "p90": quantile(values, 0.9), "p99": quantile(values, 0.99),
            "max": max(values), "n": len(values)}


def fmt_pct(p: dict[str, float]) -> str:
    if not p:
        return "—"
    return f"p50 {p['p50'] * 1000:.0f} · p90 {p['p90'] * 1000:.0f} · max {p['max'] * 1000:.0f} ms"


def threaded(fns: Sequence[Callable[[], Any]]) -> tuple[float, list[Any]]:
    """Run ``fns`` on threads released together; wall time from the release to the last one's end."""
    barrier = threading.Barrier(len(fns) + 1)
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, results


# ---------------------------------------------------------------------------------------------------------------------
# 1. streaming overhead


def figure1(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = t.request(o.tokens)
    ip = t.baseline()
    client = t.client()
    subjects: dict[str, Callable[[], Any]] = {
        "worker": lambda: client.generate(req),
        "in-process": lambda: ip.generate(req),
    }
    previous = t.previous_worker()
    if previous is not None:
        prev_client = previous.client()
        t._clients.append(prev_client)
        subjects["previous worker"] = lambda: prev_client.generate(req)
    trials = interleave(run, o.trials, subjects, f"figure 1, {t.label}")
    w, b = trials["worker"], trials["in-process"]
    same, what = same_outputs(w, b)
    tokens = f"{w[0].tokens} tokens, prompt {w[0].prompt_tokens}/{b[0].prompt_tokens} tokens, {what}"
    ks = [x.extra.get("first_piece_token") for x in b]
    if not same:
        run.note(f"figure 1, {t.label}: worker and in-process outputs differ ({what}); the comparison is still of "
                 "the same request, but not of the same tokens")
    applies = t.size != "tiny"
    # The first text piece comes after the same token in both (identical outputs): decode speed counts from there.
    # (only with at least 4 tokens after the first piece: fewer do not time a decode speed)
    usable = [k if same and k is not None and x.tokens - k >= 4 else None for x, k in zip(b, ks)]
    w_tps = [x.decode_tps_piece(k) for x, k in zip(w, usable)]
    b_tps = [x.decode_tps_piece(k) for x, k in zip(b, usable)]
    w_ttft, b_ttft = attr(w, "ttft_piece_s"), attr(b, "ttft_piece_s")
    piece_timed = same and any(w_tps)
    if not piece_timed:
        # different texts, or the streamer released (nearly) all the text at the end (the tiny model's text has
        # no spaces):
        # fall back to the timings taken where the tokens are produced (the worker's from admission)
        w_tps, b_tps = attr(w, "decode_tps_token"), attr(b, "decode_tps_token")
        w_ttft, b_ttft = attr(w, "ttft_token_s"), attr(b, "ttft_token_s")
        why = "outputs differ" if not same else "the text arrived in too few pieces"
        tokens += f"; timings taken where the tokens are produced ({why})"
    rows = [
        ratio_row(1, "decode tokens/s: worker over WebSocket ÷ in-process generate", t.label, w_tps, b_tps, "tok/s",
                  target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=tokens),
        delta_row(1, "time to first token: worker over WebSocket − in-process", t.label, w_ttft, b_ttft,
                  target="≤ +15 ms" if applies else None, check=lambda d: d <= 15.0),
    ]
    if previous is not None:
        pw = trials["previous worker"]
        p_same, p_what = same_outputs(w, pw)
        # The previous worker streams whole words (transformers' streamer); the new one every complete character:
        # compare both where the tokens are produced (the workers' own timings, from admission).
        p_tps, p_ttft = attr(pw, "decode_tps_token"), attr(pw, "ttft_token_s")
        n_tps, n_ttft = attr(w, "decode_tps_token"), attr(w, "ttft_token_s")
        ref = run.options.compare_ref
        note = f"previous worker: {ref}; {p_what}; timings taken where the tokens are produced"
        rows += [
            ratio_row(1, f"one client alone, decode tokens/s: worker ÷ previous worker ({ref})", t.label, n_tps,
                      p_tps, "tok/s", target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97, note=note),
            ratio_row(1, f"one client alone, time to first token: previous worker ({ref}) ÷ worker (speed)", t.label,
                      p_ttft, n_ttft, "s", target="≥ 0.97" if applies else None, check=lambda r: r >= 0.97,
                      scale=1000.0),
        ]
        rows[-1].unit = "ms"
        if not p_same:
            run.note(f"figure 1, {t.label}: the worker and the previous worker ({ref}) write different texts "
                     f"({p_what})")
    for row in rows[:2]:
        row.data = {
            "tokens": [x.tokens for x in w], "first_piece_token": ks,
            "worker_server_ttft_ms": [x.ttft_token_s * 1000 if x.ttft_token_s is not None else None for x in w],
            "worker_server_decode_tps": attr(w, "decode_tps_token"),
            "in_process_token_ttft_ms": [x.ttft_token_s * 1000 if x.ttft_token_s is not None else None for x in b],
            "in_process_token_decode_tps": attr(b, "decode_tps_token"),
        }
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 2. LoRA cost


def figure2(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = t.request(o.tokens)
    ip = t.baseline()
    base_conn = t.client()
    lora_conn = t.client("bench-a")

    def peft_with_fix() -> Trial:
        with ip.lm_head_fix():
            return ip.generate(req, peft=True, adapter="bench-a")

    trials = interleave(run, o.trials, {
        "worker base": lambda: base_conn.generate(req),
        "worker adapter": lambda: lora_conn.generate(req),
        "in-process plain": lambda: ip.generate(req),
        "in-process PEFT": lambda: ip.generate(req, peft=True, adapter="bench-a"),
        "in-process PEFT + fix": peft_with_fix,
    }, f"figure 2, {t.label}")
    wb, wa = trials["worker base"], trials["worker adapter"]
    plain, peft, fixed = trials["in-process plain"], trials["in-process PEFT"], trials["in-process PEFT + fix"]
    same, what = same_outputs(wa, peft)
    if not same:
        run.note(f"figure 2, {t.label}: worker and in-process PEFT outputs with the same adapter differ ({what})")
    m = t.label
    rank = f"rank {o.rank} q,k,v,o"
    rows = [
        ratio_row(2, f"decode tokens/s: worker with adapter ({rank}) ÷ worker base", m,
                  attr(wa, "decode_tps_token"), attr(wb, "decode_tps_token"), "tok/s",
                  target="≥ 0.95", check=lambda r: r >= 0.95),
        ratio_row(2, "time to first token: worker with adapter ÷ worker base (worker has its lm_head fix)", m,
                  attr(wa, "ttft_token_s"), attr(wb, "ttft_token_s"), "ms", scale=1000,
                  target="≤ 1.053 (speed ≥ 0.95)", check=lambda r: r <= 1 / 0.95),
        ratio_row(2, "decode tokens/s: in-process PEFT without the lm_head fix ÷ plain model", m,
                  attr(peft, "decode_tps_token"), attr(plain, "decode_tps_token"), "tok/s"),
        ratio_row(2, "time to first token: in-process PEFT without the lm_head fix ÷ plain model", m,
                  attr(peft, "ttft_token_s"), attr(plain, "ttft_token_s"), "ms", scale=1000),
        ratio_row(2, "decode tokens/s: in-process PEFT with the lm_head fix ÷ plain model", m,
                  attr(fixed, "decode_tps_token"), attr(plain, "decode_tps_token"), "tok/s"),
        ratio_row(2, "time to first token: in-process PEFT with the lm_head fix ÷ plain model", m,
                  attr(fixed, "ttft_token_s"), attr(plain, "ttft_token_s"), "ms", scale=1000),
    ]
    nofix, withfix = rows[3].result, rows[5].result
    if nofix is not None and withfix is not None:
        if nofix.median < 1.2:
            run.note(f"figure 2, {t.label}: the frozen-lm_head slowdown does not reproduce on this machine at this "
                     f"size (in-process PEFT without the fix: time to first token ×{nofix.median:.2f} of the plain "
                     f"model, with it ×{withfix.median:.2f}); ENVIRONMENT.md measured ×3 on the 2B architecture.")
        else:
            run.note(f"figure 2, {t.label}: the frozen-lm_head slowdown reproduces: in-process PEFT without the fix "
                     f"has ×{nofix.median:.2f} the plain model's time to first token, ×{withfix.median:.2f} with it.")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 3. hot swap (per model) and cold load (once per run)


def figure3_swap(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = Request(SHORT_PROMPT, 1)  # one token: the time to it is the time to first token, whatever the text
    ip = t.baseline()
    conn = t.client("bench-b")
    conn.load_adapter("bench-a")  # both loaded; bench-a active
    ip.peft.set_adapter("bench-a")
    state = {"worker": "bench-a", "in-process": "bench-a"}

    def other(name: str) -> str:
        return "bench-b" if name == "bench-a" else "bench-a"

    def w_switch() -> float:
        state["worker"] = other(state["worker"])
        return conn.generate(req, switch_to=state["worker"]).end_s

    def ip_switch() -> float:
        state["in-process"] = other(state["in-process"])
        return ip.generate(req, peft=True, switch_to=state["in-process"]).end_s

    trials = interleave(run, o.swap_trials, {
        "worker stay": lambda: conn.generate(req).end_s,
        "worker load_adapter switch": w_switch,
        "worker per-request switch": lambda: conn.generate(req, adapter=other(state["worker"])).end_s,
        "in-process stay": lambda: ip.generate(req, peft=True, adapter=state["in-process"]).end_s,
        "in-process set_adapter switch": ip_switch,
    }, f"figure 3 (hot swap), {t.label}")
    stay = trials["worker stay"]
    note = "1-token request, time to its end (= its first token); subject: switching, baseline: staying"
    return [
        delta_row(3, "hot swap: added time to first token, load_adapter to another loaded adapter then generate "
                  "(worker)", t.label, trials["worker load_adapter switch"], stay,
                  target="≤ +5 ms", check=lambda d: d <= 5.0, note=note),
        delta_row(3, "hot swap: added time to first token, per-request adapter field (worker)", t.label,
                  trials["worker per-request switch"], stay, target="≤ +5 ms", check=lambda d: d <= 5.0),
        delta_row(3, "hot swap: added time to first token, set_adapter then generate (in-process PEFT)", t.label,
                  trials["in-process set_adapter switch"], trials["in-process stay"]),
    ]


class S3:
    """The S3 server for the cold-load figure: SeaweedFS started here, or an external MinIO/S3."""

    def __init__(self, run: Run) -> None:
        o = run.options
        self.server: Any = None
        if o.s3_endpoint:
            self.endpoint = o.s3_endpoint
            self.access_key = o.s3_access_key or ""
            self.secret_key = o.s3_secret_key or ""
        else:
            try:  # the test suite's real S3 server (SeaweedFS on loopback), from the checkout's tests/
                s3server = importlib.import_module("tests.s3server")
            except ImportError as exc:
                raise BenchError(f"cannot start the S3 server ({exc}); pass --s3-endpoint") from exc
            self.server = s3server.SeaweedS3(run.tmp / "s3").start()
            self.endpoint = self.server.endpoint
            self.access_key, self.secret_key = s3server.ACCESS_KEY, s3server.SECRET_KEY
        self.bucket = f"bench-{int(time.time())}"

    def client(self) -> Any:
        from adapters.s3 import make_client

        return make_client(self.endpoint, self.access_key, self.secret_key)

    def env(self) -> dict[str, str]:
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": self.access_key,
                "MINIO_SECRET_KEY": self.secret_key, "MINIO_BUCKET": self.bucket, "MINIO_SECURE": "false"}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def figure3_cold(run: Run, model_dir: Path, label: str, size: str | None) -> list[Row]:
    """Cold ``load_adapter`` from S3 (not in memory, not in the worker's cache) of rank-16 q,k,v,o adapters."""
    from adapters.cache import VerifiedCache
    from adapters.s3 import S3Store

    o = run.options
    n = o.cold_trials
    say(f"figure 3 (cold load), {label}: building {n + 2} adapters")
    specs = [AdapterSpec(f"cold-{i}", seed=1000 + i, rank=16) for i in range(n + 2)]
    paths = run.cache.adapters(model_dir, specs, with_peft=False)
    size_mb = adapter_bytes(paths["cold-0"]) / 1e6
    t = Target(run, model_dir, label, size)
    s3 = S3(run)
    worker: WorkerProcess | None = None
    try:
        client = s3.client()
        publisher = S3Store(client, s3.bucket, VerifiedCache(run.tmp / "publisher-cache", 10**11),
                            endpoint=s3.endpoint)
        publisher.ensure_bucket()
        for name, path in paths.items():
            publisher.publish(name, path, replace=True)
        say(f"figure 3 (cold load), {t.label}: starting the S3 worker and the in-process baseline")
        config = WorkerConfig(model_dir, device=o.device, dtype=t.dtype, max_loaded_adapters=1, s3=s3.env(),
                              cache_dir=run.tmp / "worker-adapter-cache")
        worker = WorkerProcess(config, run.logs / f"worker-s3-{model_dir.name}.log").start()
        conn = worker.client()
        ip = InProcess(model_dir, device=o.device, dtype=t.dtype, plain=False)
        resident = f"cold-{n + 1}"
        ip.load_peft({resident: paths[resident]})
        conn.load_adapter(f"cold-{n}")  # warm-up: first S3 request, first injection
        stages: list[dict[str, float]] = []
        load_ms: list[float] = []

        def worker_load(i: int) -> float:
            before = worker.metrics()  # type: ignore[union-attr]
            started = time.perf_counter()
            reply = conn.load_adapter(f"cold-{i}")
            elapsed = time.perf_counter() - started
            after = worker.metrics()  # type: ignore[union-attr]
            if not isinstance(reply, AdapterLoaded) or reply.load_ms is None:
                raise BenchError(f"cold-{i}: the worker answered {reply.type} without load_ms")
            if reply.cached:
                raise BenchError(f"cold-{i} was answered from the cache: the load was not cold")
            stages.append(stage_seconds(before, after))
            load_ms.append(reply.load_ms)
            return elapsed

        def baseline_load(i: int) -> float:
            name = f"cold-{i}"
            started = time.perf_counter()
            target = Path(tempfile.mkdtemp(dir=run.tmp, prefix="download-"))
            for obj in client.list_objects(s3.bucket, prefix=name + "/", recursive=True):
                key = obj.object_name or ""
                client.fget_object(s3.bucket, key, str(target / key.rsplit("/", 1)[1]))
            ip.load_adapter(name, target)
            elapsed = time.perf_counter() - started
            ip.delete_adapter(name)
            shutil.rmtree(target, ignore_errors=True)
            return elapsed

        worker_s: list[float] = []
        baseline_s: list[float] = []
        for i in range(n):
            pair = [(worker_s, worker_load), (baseline_s, baseline_load)]
            for out, fn in pair if i % 2 == 0 else pair[::-1]:
                out.append(fn(i))
            say(f"figure 3 (cold load), {t.label}: trial {i + 1}/{n}")
    finally:
        if worker is not None:
            worker.stop()
        s3.stop()
    is_2b = size == "2b" or abs(size_mb - 25.7) < 1.0
    what = f"rank-16 q,k,v,o adapter, {size_mb:.1f} MB"
    target = "≤ 0.4 s" if is_2b else "≤ 0.4 s (for a 2B-sized adapter)"
    rows = [
        Row(3, f"cold load_adapter from S3 on loopback, end to end ({what}): worker; baseline: download with the "
            "minio SDK + PeftModel.load_adapter", t.label, summarize(worker_s), "s", summarize(worker_s),
            summarize(baseline_s), "s", target=target,
            met=(statistics.median(worker_s) <= 0.4) if is_2b else None,
            note="" if is_2b else "a smaller model and adapter than the 2B-sized one the target is for",
            data={"load_ms": load_ms}),
    ]
    for stage in ("resolve", "download", "verify", "fetch", "inject"):
        values = [s.get(stage) for s in stages]
        if all(v is None for v in values):
            continue
        meaning = {"resolve": "read the manifest", "download": "transfer, sha256 while streaming, fsync",
                   "verify": "compare with the manifest, rename into the cache",
                   "fetch": "whole fetch: download + verify", "inject": "validate against the model + inject"}
        s = summarize(values, 1000)
        rows.append(Row(3, f"cold load stage {stage} ({meaning[stage]}), from /metrics", t.label, s, "ms", s,
                        None, "ms"))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 4. concurrency


def figure4(run: Run, t: Target) -> list[Row]:
    """Many clients on a mix of adapters: the batched engine's throughput and latency beside serial in-process.

    Every client sends the same image and prompt (so that each output can be checked against the in-process output
    of its adapter), and the worker runs with its vision cache off: each request encodes its image, as the serial
    baseline does, and the figure measures batching alone.
    """
    o = run.options
    req = t.request(o.concurrency_tokens)
    ip = t.baseline()
    levels = sorted(set(o.clients))
    t.stop_worker()
    t.worker(env={"VISION_CACHE_MAX_BYTES": "0"})
    conns = [t.client(MIX[i % len(MIX)]) for i in range(max(levels))]
    ip_out: dict[str, list[Any]] = {"walls": [], "tokens": [], "ttft": [], "texts": []}
    w_out: dict[int, dict[str, list[Any]]] = {
        c: {"walls": [], "tokens": [], "ttft": [], "ttft_later": [], "texts": []} for c in levels}
    expected: dict[str | None, str] = {}

    def baseline_round() -> None:
        started = time.perf_counter()
        trials = [ip.generate(req, peft=True, adapter=a) for a in MIX]
        ip_out["walls"].append(time.perf_counter() - started)
        ip_out["tokens"].append(sum(x.tokens for x in trials))
        ip_out["ttft"].extend(x.ttft_token_s for x in trials)
        for a, x in zip(MIX, trials):
            expected.setdefault(a, x.text)

    def worker_round(c: int) -> None:
        def client_fn(i: int) -> Callable[[], list[Trial]]:
            return lambda: [conns[i].generate(req) for _ in range(o.requests_per_client)]

        wall, results = threaded([client_fn(i) for i in range(c)])
        out = w_out[c]
        out["walls"].append(wall)
        out["tokens"].append(sum(x.tokens for trials in results for x in trials))
        out["ttft"].extend(x.ttft_token_s for trials in results for x in trials)
        out["ttft_later"].extend(x.ttft_token_s for trials in results for x in trials[1:])
        out["texts"].extend((MIX[i % len(MIX)], x.text) for i, trials in enumerate(results) for x in trials)

    subjects: dict[str, Callable[[], None]] = {"in-process serial": baseline_round}
    for c in levels:
        subjects[f"worker {c} clients"] = lambda c=c: worker_round(c)  # type: ignore[misc]
    # One client alone before and after the concurrent rounds (this worker is fresh: it has never run two
    # generations at once). On CPU the speed of a lone request may drop once several generation threads exist.
    single = max(3, o.concurrency_trials)

    def singles() -> dict[str, list[Trial]]:
        return interleave(run, single, {
            "worker": lambda: conns[0].generate(req),
            "in-process": lambda: ip.generate(req, peft=True, adapter=MIX[0]),
        }, f"figure 4, {t.label}, one client alone", warmup=0)

    for _ in range(run.options.warmup):  # warm-up, one request at a time
        conns[0].generate(req)
        ip.generate(req, peft=True, adapter=MIX[0])
    before = singles()
    # warm-up of the concurrent rounds (once); then the records restart
    worker_round(max(levels))
    baseline_round()
    for out in [ip_out, *w_out.values()]:
        for values in out.values():
            values.clear()
    interleave(run, o.concurrency_trials, subjects, f"figure 4, {t.label}", warmup=0)
    after = singles()
    ip_rate = [tok / wall for tok, wall in zip(ip_out["tokens"], ip_out["walls"])]
    ip_ttft = percentiles([x for x in ip_out["ttft"] if x is not None])
    rows = []
    applies = t.size == "mid"
    for c in levels:
        out = w_out[c]
        rate = [tok / wall for tok, wall in zip(out["tokens"], out["walls"])]
        mismatched = sum(1 for a, text in out["texts"] if a in expected and expected[a] != text)
        crosstalk = ("outputs identical to in-process per adapter" if not mismatched
                     else f"{mismatched}/{len(out['texts'])} outputs differ from in-process")
        if mismatched:
            run.note(f"figure 4, {t.label}, {c} clients: {crosstalk}")
        eight = applies and c == 8
        rows.append(ratio_row(4, f"concurrency, {c} client{'s' if c > 1 else ''} × {o.requests_per_client} "
                              "requests (mix of 3 adapters + base): aggregate tokens/s ÷ serial in-process",
                              t.label, rate, ip_rate, "tok/s", note=crosstalk, target="≥ 3.5" if eight else None,
                              check=lambda r: r >= 3.5))
        for key, what in (("ttft", "every request"), ("ttft_later", "each client's requests after its first")):
            w_ttft = percentiles([x for x in out[key] if x is not None])
            if not w_ttft:
                continue
            p90 = w_ttft["p90"] / ip_ttft["p90"] if w_ttft and ip_ttft else None
            row = Row(4, f"concurrency, {c} client{'s' if c > 1 else ''}: time to first token percentiles, {what} "
                      "(worker: from admission, queueing included) ÷ serial in-process, one request alone",
                      t.label, summarize([p90]), "×", subject_text=fmt_pct(w_ttft), baseline_text=fmt_pct(ip_ttft),
                      result_text=f"p90 ×{p90:.2f}" if p90 is not None else "—",
                      data={"worker": w_ttft, "in_process": ip_ttft})
            if eight and key == "ttft" and p90 is not None:
                row.target, row.met = "p90 ≤ 3", p90 <= 3.0
            rows.append(row)
    slots = o.max_batch_rows if o.max_batch_rows is not None else "the worker's default"
    rows[0].note += (f"; MAX_BATCH_ROWS={slots}, {o.concurrency_tokens} tokens per request, the worker's vision "
                     "cache off")
    for name, unit, key in (("decode tokens/s", "tok/s", "decode_tps_token"),
                            ("time to first token", "ms", "ttft_token_s")):
        scale = 1000.0 if unit == "ms" else 1.0
        wb, wa = attr(before["worker"], key), attr(after["worker"], key)
        bb, ba = attr(before["in-process"], key), attr(after["in-process"], key)
        w_ratio, b_ratio = summarize(paired(wa, wb, ratio)), summarize(paired(ba, bb, ratio))
        w0, w1, b0, b1 = (summarize(x, scale) for x in (wb, wa, bb, ba))
        if not (w_ratio and b_ratio and w0 and w1 and b0 and b1):
            continue
        rows.append(Row(
            4, f"one client alone, {name}: after the concurrent rounds ÷ before them (the worker had never run two "
            "generations at once before)", t.label, w_ratio, "×",
            subject_text=f"{w0.median:.4g} → {w1.median:.4g} {unit}",
            baseline_text=f"{b0.median:.4g} → {b1.median:.4g} {unit} (×{b_ratio.median:.3f})",
            data={"worker_before": wb, "worker_after": wa, "in_process_before": bb, "in_process_after": ba,
                  "in_process_ratio": b_ratio.to_json()},
        ))
    t.stop_worker()  # the next figures use a worker with the default settings
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 5. A/B


def figure5(run: Run, t: Target) -> list[Row]:
    o = run.options
    req = t.request(o.tokens)
    ip = t.baseline()
    ca, cb = t.client("bench-a"), t.client("bench-b")
    texts: dict[str, list[str]] = {"solo-a": [], "solo-b": [], "pair-a": [], "pair-b": [], "ip-a": [], "ip-b": []}

    def solo(conn: WorkerClient, key: str) -> float:
        trial = conn.generate(req)
        texts[key].append(trial.text)
        return trial.end_s

    def pair(conn_a: WorkerClient, conn_b: WorkerClient, key: str) -> float:
        """Both adapters streamed side by side; their texts under ``key``-a and ``key``-b."""
        wall, (a, b) = threaded([lambda: conn_a.generate(req), lambda: conn_b.generate(req)])
        texts[f"{key}-a"].append(a.text)
        texts[f"{key}-b"].append(b.text)
        return wall

    def ip_solo(name: str, key: str) -> float:
        trial = ip.generate(req, peft=True, adapter=name)
        texts[key].append(trial.text)
        return trial.end_s

    def ip_serial() -> float:
        started = time.perf_counter()
        ip.generate(req, peft=True, adapter="bench-a")
        ip.generate(req, peft=True, adapter="bench-b")
        return time.perf_counter() - started

    subjects: dict[str, Callable[[], float]] = {}
    natural = o.device == "cpu"  # CPU_WEIGHT_LAYOUT only matters there
    if natural:
        alt = t.alternative_worker({"CPU_WEIGHT_LAYOUT": "natural"})
        na, nb = t.client("bench-a", worker=alt), t.client("bench-b", worker=alt)
        texts.update({"nat-a": [], "nat-b": [], "nat-pair-a": [], "nat-pair-b": []})
        subjects = {"natural solo a": lambda: solo(na, "nat-a"), "natural solo b": lambda: solo(nb, "nat-b"),
                    "natural pair": lambda: pair(na, nb, "nat-pair")}
    trials = interleave(run, o.trials, {
        **subjects,
        "worker solo a": lambda: solo(ca, "solo-a"),
        "worker solo b": lambda: solo(cb, "solo-b"),
        "worker pair": lambda: pair(ca, cb, "pair"),
        "in-process solo a": lambda: ip_solo("bench-a", "ip-a"),
        "in-process solo b": lambda: ip_solo("bench-b", "ip-b"),
        "in-process a then b": ip_serial,
    }, f"figure 5, {t.label}")
    w_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["worker pair"], trials["worker solo a"],
                                                   trials["worker solo b"])]
    ip_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["in-process a then b"], trials["in-process solo a"],
                                                    trials["in-process solo b"])]
    clean = all(x == texts["solo-a"][0] for x in texts["pair-a"]) and all(
        x == texts["solo-b"][0] for x in texts["pair-b"])
    matches = texts["solo-a"][0] == texts["ip-a"][0] and texts["solo-b"][0] == texts["ip-b"][0]
    note = ("side-by-side outputs identical to solo" if clean else "side-by-side outputs DIFFER from solo") + (
        ", and to in-process" if matches else ", differ from in-process") + (
        "; the worker has run pairs in its warm-up: the steady state of a worker serving several clients")
    if not clean:
        run.note(f"figure 5, {t.label}: two adapters streamed side by side do not reproduce their solo outputs")
    s = summarize(w_ratio)
    applies = t.size == "mid"
    rows = [
        Row(5, "A/B: wall time of two adapters streamed side by side ÷ one alone (worker); baseline: in-process "
            "A then B ÷ one", t.label, s, "×", s, summarize(ip_ratio), "×", note=note,
            target="≤ 1.3" if applies else None, met=(s.median <= 1.3) if applies and s else None),
        ratio_row(5, "A/B: wall time of the worker's side-by-side pair ÷ in-process A then B", t.label,
                  trials["worker pair"], trials["in-process a then b"], "s"),
    ]
    if natural:
        n_ratio = [p / ((a + b) / 2) for p, a, b in zip(trials["natural pair"], trials["natural solo a"],
                                                       trials["natural solo b"])]
        same = all(x == texts["solo-a"][0] for x in texts["nat-a"] + texts["nat-pair-a"]) and all(
            x == texts["solo-b"][0] for x in texts["nat-b"] + texts["nat-pair-b"])
        if not same:
            run.note(f"figure 5, {t.label}: CPU_WEIGHT_LAYOUT=natural writes other text than the default layout")
        n = summarize(n_ratio)
        rows += [
            Row(5, "A/B with CPU_WEIGHT_LAYOUT=natural (a CPU box serving A/B pairs): pair ÷ one alone; baseline: "
                "the same with the default layout", t.label, n, "×", n, s, "×",
                note=("outputs identical to the default layout's" if same else "outputs DIFFER from the default "
                      "layout's"), target="≤ 1.3" if applies else None,
                met=(n.median <= 1.3) if applies and n else None),
            ratio_row(5, "one request alone: CPU_WEIGHT_LAYOUT=natural ÷ default layout (wall time)", t.label,
                      [a + b for a, b in zip(trials["natural solo a"], trials["natural solo b"])],
                      [a + b for a, b in zip(trials["worker solo a"], trials["worker solo b"])], "s"),
        ]
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 6. memory


def figure6(run: Run, t: Target) -> list[Row]:
    import psutil

    o = run.options
    req = Request(SHORT_PROMPT, 2)
    ip = t.baseline()
    paths = t.adapters()
    say(f"figure 6, {t.label}: starting a worker with MAX_LOADED_ADAPTERS=1")
    config = WorkerConfig(t.model_dir, device=o.device, dtype=t.dtype, store_dir=t.store_dir(),
                          max_loaded_adapters=1, max_batch_rows=o.max_batch_rows)
    worker = WorkerProcess(config, run.logs / f"worker-memory-{t.model_dir.name}.log").start()
    me = psutil.Process()
    cuda = o.device == "cuda"
    try:
        conn = worker.client()
        counter = {"worker": 0, "in-process": 0}
        previous: list[str] = []

        def worker_cycle() -> None:
            i = counter["worker"]
            counter["worker"] += 1
            conn.load_adapter(ADAPTERS[i % len(ADAPTERS)])
            conn.generate(req)

        def ip_cycle() -> None:
            i = counter["in-process"]
            counter["in-process"] += 1
            name = f"cycle-{i}"
            ip.load_adapter(name, paths[ADAPTERS[i % len(ADAPTERS)]])
            ip.generate(req, peft=True, adapter=name)
            if previous:
                ip.delete_adapter(previous.pop())
            previous.append(name)

        def ip_rss() -> float:
            gc.collect()
            return float(me.memory_info().rss)

        def cuda_worker() -> float | None:
            return worker.metrics().get("inference_cuda_memory_allocated_bytes") if cuda else None

        def cuda_ip() -> float | None:
            if not cuda:
                return None
            import torch

            return float(torch.cuda.memory_allocated())

        for _ in range(len(ADAPTERS) * 2):  # warm-up: every adapter loaded (and evicted) once on each side
            worker_cycle()
            ip_cycle()
        injections = 'inference_adapter_load_seconds_count{stage="inject"}'  # one per adapter really loaded
        loads_before = worker.metrics().get(injections, 0.0)
        w0, b0, wc0, bc0 = float(worker.rss()), ip_rss(), cuda_worker(), cuda_ip()
        w_ratios: list[float] = []
        b_ratios: list[float] = []
        blocks = 10 if o.cycles >= 10 else 1
        per_block = max(1, o.cycles // blocks)
        for k in range(blocks):
            sides = [("worker", worker_cycle), ("in-process", ip_cycle)]
            for _side, fn in sides if k % 2 == 0 else sides[::-1]:
                for _ in range(per_block):
                    fn()
            w_ratios.append(worker.rss() / w0)
            b_ratios.append(ip_rss() / b0)
            say(f"figure 6, {t.label}: {(k + 1) * per_block}/{blocks * per_block} cycles")
        w1, b1, wc1, bc1 = float(worker.rss()), ip_rss(), cuda_worker(), cuda_ip()
        m = worker.metrics()
        loads = m.get(injections, 0.0) - loads_before
        resident = m.get("inference_loaded_adapters")
    finally:
        worker.stop()
    cycles = blocks * per_block
    evicting = f"{loads:.0f} adapters injected, {resident:.0f} resident at the end" if resident is not None else ""
    if loads < cycles:
        run.note(f"figure 6, {t.label}: only {loads:.0f} of {cycles} worker cycles loaded an adapter from the store")
    w_ratio, b_ratio = w1 / w0, b1 / b0
    mb = 1e6
    rows = [
        Row(6, f"memory: RSS after {cycles} adapter load/evict cycles ÷ before (worker, MAX_LOADED_ADAPTERS=1); "
            "baseline: in-process PEFT load_adapter/delete_adapter", t.label,
            summarize([w_ratio]), "×", target="≤ 1.02", met=w_ratio <= 1.02,
            subject_text=f"{w0 / mb:.0f} → {w1 / mb:.0f} MB", baseline_text=f"{b0 / mb:.0f} → {b1 / mb:.0f} MB "
            f"(×{b_ratio:.3f})", result_text=f"{w_ratio:.3f}× [{min(w_ratios):.3f}–{max(w_ratios):.3f}]",
            note=evicting, data={"worker_rss": [w0, w1], "in_process_rss": [b0, b1], "worker_checkpoints": w_ratios,
                                 "in_process_checkpoints": b_ratios}),
    ]
    if cuda and wc0 and wc1 and bc0 and bc1:
        rows.append(Row(6, f"memory: CUDA memory allocated after {cycles} cycles ÷ before (worker)", t.label,
                        summarize([wc1 / wc0]), "×", target="≤ 1.02", met=wc1 / wc0 <= 1.02,
                        subject_text=f"{wc0 / mb:.0f} → {wc1 / mb:.0f} MB",
                        baseline_text=f"{bc0 / mb:.0f} → {bc1 / mb:.0f} MB (×{bc1 / bc0:.3f})"))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# 7. The vLLM engine


def vllm_python() -> Path:
    """The vLLM venv's interpreter (VLLM_VENV, default .venv-vllm; make venv-vllm)."""
    from .worker import ROOT

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

    from .worker import ROOT

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


# ---------------------------------------------------------------------------------------------------------------------
# 8. Ray Serve


def figure8(run: Run, t: Target) -> list[Row]:
    """The Ray path (a front holding no model → one Ray Serve replica with every core) beside the in-process worker,
    through the same WebSocket protocol: 1 client, then 8 clients on a mix of adapters and the base. Only one of
    the two serves at a time (trials interleaved); both have the same engine, batch rows and cores, so the ratio is
    the cost of the hop (front → handle → replica → stream back)."""
    o = run.options
    req = t.request(o.concurrency_tokens)
    t.stop_worker()
    local = t.worker()
    config = WorkerConfig(t.model_dir, device=o.device, dtype=t.dtype, store_dir=t.store_dir(), max_loaded_adapters=8,
                          max_batch_rows=o.max_batch_rows)
    say(f"figure 8, {t.label}: starting a local Ray cluster with one replica")
    deployment = RayDeployment(config, run.logs / f"ray-{t.model_dir.name}.log", run.tmp / "ray").start()
    assert deployment.address is not None
    front_config = WorkerConfig(t.model_dir, device=o.device, dtype=t.dtype, store_dir=t.store_dir(),
                                max_loaded_adapters=8,
                                env={"INFERENCE_ENGINE": "ray", "RAY_ADDRESS": deployment.address,
                                     "RAY_APP_NAME": "bench", "RAY_AUTH_MODE": "disabled"})
    front = WorkerProcess(front_config, run.logs / f"ray-front-{t.model_dir.name}.log")
    rows: list[Row] = []
    try:
        front.start()
        clients = 8
        paths = {"in-process": local, "ray": front}
        conns = {name: [t.client(MIX[i % len(MIX)], worker=w) for i in range(clients)] for name, w in paths.items()}
        out: dict[str, dict[str, list[Any]]] = {
            f"{name} {c}": {"rate": [], "ttft": [], "texts": [], "tokens": []} for name in paths for c in (1, clients)}

        def round_of(name: str, c: int) -> Callable[[], None]:
            def body() -> None:
                wall, results = threaded([
                    (lambda i=i: [conns[name][i].generate(req) for _ in range(o.requests_per_client)])  # type: ignore[misc]
                    for i in range(c)])
                record = out[f"{name} {c}"]
                tokens = sum(x.tokens for trials in results for x in trials)
                record["rate"].append(tokens / wall)
                record["tokens"].append(tokens)
                record["ttft"].extend(x.ttft_piece_s for trials in results for x in trials)
                record["texts"].extend((MIX[i % len(MIX)], x.text) for i, trials in enumerate(results) for x in trials)
            return body

        subjects = {f"{name} {c}": round_of(name, c) for c in (1, clients) for name in paths}
        import psutil

        assert front.proc is not None
        front_process = psutil.Process(front.proc.pid)
        cpu = {"s": 0.0, "tokens": 0}
        for key in list(subjects):
            if key.startswith("ray"):
                def counted(body: Callable[[], None] = subjects[key], key: str = key) -> None:
                    before, rounds = front_process.cpu_times(), len(out[key]["tokens"])
                    body()
                    after = front_process.cpu_times()
                    cpu["s"] += (after.user - before.user) + (after.system - before.system)
                    cpu["tokens"] += sum(out[key]["tokens"][rounds:])
                subjects[key] = counted
        interleave(run, o.concurrency_trials, subjects, f"figure 8, {t.label}")
        for c in (1, clients):
            ray_out, local_out = out[f"ray {c}"], out[f"in-process {c}"]
            expected = dict(local_out["texts"])
            mismatched = sum(1 for a, text in ray_out["texts"] if expected.get(a, text) != text)
            same = ("outputs identical to the in-process worker per adapter" if not mismatched
                    else f"{mismatched}/{len(ray_out['texts'])} outputs differ from the in-process worker")
            if mismatched:
                run.note(f"figure 8, {t.label}, {c} clients: {same}")
            who = f"{c} client{'s' if c > 1 else ''} × {o.requests_per_client} requests"
            rows.append(ratio_row(8, f"Ray Serve, {who}: aggregate tokens/s, Ray path (front → 1 replica) ÷ "
                                  "in-process worker", t.label, ray_out["rate"], local_out["rate"], "tok/s",
                                  note=f"{same}; {o.concurrency_tokens} tokens per request"))
            ray_ttft = sorted(x for x in ray_out["ttft"] if x is not None)
            local_ttft = sorted(x for x in local_out["ttft"] if x is not None)
            rows.append(delta_row(8, f"Ray Serve, {who}: time to first text piece at the client, Ray path − "
                                  "in-process worker (requests paired by rank)", t.label, ray_ttft, local_ttft))
        if cpu["tokens"]:
            per_token_ms = cpu["s"] * 1000 / cpu["tokens"]
            rows.append(Row(8, "Ray front: CPU time of the front process per streamed token (every Ray round; "
                            "bounds what one front core can stream)", t.label, summarize([per_token_ms]), "ms",
                            note=f"{cpu['tokens']} tokens, {cpu['s']:.1f} CPU s; one core streams at most "
                            f"~{1000 / per_token_ms:.0f} tokens/s" if per_token_ms else ""))
    finally:
        front.stop()
        deployment.stop()
        t.stop_worker()
    return rows


def finite(rows: list[Row]) -> bool:
    for r in rows:
        for s in (r.result, r.subject, r.baseline):
            if s is not None and not all(math.isfinite(x) for x in (s.median, s.lo, s.hi)):
                return False
    return True


__all__ = ["Options", "Run", "Target", "figure1", "figure2", "figure3_cold", "figure3_swap", "figure4", "figure5",
           "figure6", "figure7", "finite", "say"]
