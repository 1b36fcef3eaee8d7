"""Figure 6, memory: the worker's RSS (and CUDA memory) after many adapter load/evict cycles ÷ before, beside
in-process PEFT ``load_adapter``/``delete_adapter``."""

from __future__ import annotations

import gc

from ..common import SHORT_PROMPT, Request
from ..report import Row
from ..stats import summarize
from ..worker import WorkerConfig, WorkerProcess
from .target import ADAPTERS, Run, Target, say


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
