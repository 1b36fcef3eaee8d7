"""What the figures of one run share: the options, the run (model cache, scratch directory, notes) and the model
under test (its checkpoint, adapters, local store, in-process baseline and workers, started lazily)."""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..baseline import InProcess
from ..common import PROMPT, Request, diagram_png
from ..models import AdapterSpec, ModelCache, is_vision_model, parameter_count
from ..report import Row
from ..worker import SseClient, WorkerClient, WorkerConfig, WorkerProcess

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

            from ..worker import ROOT

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
        self._clients: list[WorkerClient | SseClient] = []

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

    def worker(self, env: dict[str, str] | None = None, http_api: bool = False) -> WorkerProcess:
        """The worker (started on first use; ``env``: settings of a worker started now, for one figure;
        ``http_api``: a worker started now serves its HTTP API too, on a free port)."""
        if self._worker is None:
            say(f"{self.label}: starting the worker" + (f" with {env}" if env else "")
                + (" and its HTTP API" if http_api else ""))
            o = self.run.options
            config = WorkerConfig(self.model_dir, device=o.device, dtype=self.dtype, store_dir=self.store_dir(),
                                  max_loaded_adapters=8, max_batch_rows=o.max_batch_rows, env=dict(env or {}),
                                  http_api=http_api)
            self._worker = WorkerProcess(config, self.run.logs / f"worker-{self.model_dir.name}.log").start()
        return self._worker

    def previous_worker(self, env: dict[str, str] | None = None) -> WorkerProcess | None:
        """The worker of ``--compare-ref`` on the same model, adapters and settings as :meth:`worker` (``env``: as
        the figure's own worker), or None."""
        source = self.run.previous_source()
        if source is None:
            return None
        if self._previous is None:
            say(f"{self.label}: starting the previous worker ({self.run.options.compare_ref})"
                + (f" with {env}" if env else ""))
            o = self.run.options
            config = WorkerConfig(self.model_dir, device=o.device, dtype=self.dtype, store_dir=self.store_dir(),
                                  max_loaded_adapters=8, max_batch_rows=o.max_batch_rows, env=dict(env or {}),
                                  source_dir=source)
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

    def sse_client(self, worker: WorkerProcess | None = None) -> SseClient:
        """An HTTP client of the worker's OpenAI-compatible API (the worker must serve it: ``http_api``)."""
        c = (worker or self.worker()).sse_client()
        self._clients.append(c)
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
