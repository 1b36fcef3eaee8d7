"""Figure 4, concurrency: many clients on a mix of three adapters and the base, the batched engine's aggregate
tokens/s and time to first token beside serial in-process generation, and one client alone before and after."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..common import Trial
from ..report import Row
from ..stats import paired, ratio, summarize
from .measure import attr, fmt_pct, interleave, percentiles, ratio_row, threaded
from .target import MIX, Run, Target


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
    env = {"VISION_CACHE_MAX_BYTES": "0"}
    t.worker(env=env)
    conns = [t.client(MIX[i % len(MIX)]) for i in range(max(levels))]
    # With --compare-ref, the previous worker serves the most clients too, in the same interleaved trials.
    previous = t.previous_worker(env=env)
    prev_conns = [t.client(MIX[i % len(MIX)], worker=previous) for i in range(max(levels))] if previous else []
    prev_out: dict[str, list[Any]] = {"walls": [], "tokens": [], "texts": []}
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

    def previous_round() -> None:
        def client_fn(i: int) -> Callable[[], list[Trial]]:
            return lambda: [prev_conns[i].generate(req) for _ in range(o.requests_per_client)]

        wall, results = threaded([client_fn(i) for i in range(len(prev_conns))])
        prev_out["walls"].append(wall)
        prev_out["tokens"].append(sum(x.tokens for trials in results for x in trials))
        prev_out["texts"].extend((MIX[i % len(MIX)], x.text) for i, trials in enumerate(results) for x in trials)

    subjects: dict[str, Callable[[], None]] = {"in-process serial": baseline_round}
    for c in levels:
        subjects[f"worker {c} clients"] = lambda c=c: worker_round(c)  # type: ignore[misc]
    if previous is not None:
        subjects[f"previous worker {len(prev_conns)} clients"] = previous_round
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
    if previous is not None:
        previous_round()
    for out in [ip_out, prev_out, *w_out.values()]:
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
    if previous is not None:
        most = max(levels)
        ref = o.compare_ref
        rate = [tok / wall for tok, wall in zip(w_out[most]["tokens"], w_out[most]["walls"])]
        prev_rate = [tok / wall for tok, wall in zip(prev_out["tokens"], prev_out["walls"])]
        same = Counter(w_out[most]["texts"]) == Counter(prev_out["texts"])  # (adapter, text) pairs, any order
        rows.append(ratio_row(4, f"concurrency, {most} clients (mix of 3 adapters + base): aggregate tokens/s, worker "
                              f"÷ previous worker ({ref})", t.label, rate, prev_rate, "tok/s",
                              target="≥ 0.98" if applies else None, check=lambda r: r >= 0.98,
                              note="outputs identical to the previous worker's" if same else
                              "outputs DIFFER from the previous worker's"))
        if not same:
            run.note(f"figure 4, {t.label}: the worker and the previous worker ({ref}) write different texts")
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
