"""How the figures measure: subjects run in interleaved trials (the order reversed every trial, A B, B A, A B …, so
that the machine's noise hits both), clients released together on threads, and the rows that compare a subject with
its baseline."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..common import Trial
from ..report import Row
from ..stats import delta, paired, quantile, ratio, summarize
from .target import Run, say


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


def finite(rows: list[Row]) -> bool:
    for r in rows:
        for s in (r.result, r.subject, r.baseline):
            if s is not None and not all(math.isfinite(x) for x in (s.median, s.lo, s.hi)):
                return False
    return True
