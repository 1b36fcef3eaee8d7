"""Figure 3, hot swap and cold load: the time a switch between two loaded adapters adds to the first token (per
model), and a cold ``load_adapter`` from S3 end to end and split by stage (once per run, on a SeaweedFS server
started here or an external S3 given by ``--s3-endpoint``)."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3
from wire.protocol import AdapterLoaded

from ..baseline import InProcess
from ..common import SHORT_PROMPT, BenchError, Request
from ..models import AdapterSpec, adapter_bytes
from ..report import Row
from ..stats import summarize
from ..worker import WorkerConfig, WorkerProcess, stage_seconds
from .measure import delta_row, interleave
from .target import Run, Target, say


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
        self.server: SeaweedS3 | None = None
        if o.s3_endpoint:
            self.endpoint = o.s3_endpoint
            self.access_key = o.s3_access_key or ""
            self.secret_key = o.s3_secret_key or ""
        else:  # SeaweedFS on loopback (tools/s3server.py, the server the tests use too)
            server = self.server = SeaweedS3(run.tmp / "s3").start()
            self.endpoint = server.endpoint
            self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
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
