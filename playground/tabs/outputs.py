"""How the playground shows outputs: each one in its lane as it streams, their timings, their failures (each once),
and the comparison of two outputs (where they diverge, a word-level diff)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from playground.client import describe_progress
from playground.diff import describe_divergence, diff_html, first_divergence, inert_markdown, word_diff
from playground.history import Output, RunRecord, code_span, first_token_ms
from playground.runs import explain
from playground.tabs.common import show_notice
from wire.protocol import AdapterProgress

LANE_HEIGHT = 420


class OutputView:
    """The placeholders of one output: adapter loading, status line, text (in a scrolling box once there is text),
    metrics. A failed output with no text takes one line, not an empty box."""

    def __init__(self, key: str, out: Output, ab: bool) -> None:
        st.markdown(f"**{out.label} · {out.adapter_label}**" if ab else f"**{out.adapter_label}**")
        self.key = key
        self.ab = ab
        self.load = st.empty()
        self.status = st.empty()
        self.box = st.empty()
        self.text: Any = None
        self.metrics = st.empty()

    def progress(self, progress: AdapterProgress) -> None:
        fraction = min(1.0, progress.bytes / progress.total) if progress.total else 0.0
        self.load.progress(fraction, text=f"Adapter {progress.adapter_path}: {describe_progress(progress)}")

    def show(self, out: Output, raw: bool = False) -> None:
        if out.adapter_load is not None and out.status != "loading":
            load = out.adapter_load
            self.load.caption(f"Adapter loaded ({'cached' if load['cached'] else 'fetched'}, {load['load_ms']} ms)")
        failed = f"failed: {out.error['code']}" if out.error else "failed"
        line = {"pending": "waiting", "loading": "loading the adapter…", "streaming": "streaming…",
                "done": f"done ({out.finish_reason})", "stopped": "stopped", "error": failed}[out.status]
        self.status.caption(line)
        cursor = " ▌" if out.status == "streaming" else ""
        if out.text:
            if self.text is None:
                with self.box.container():
                    with st.container(key=self.key, border=True, height=LANE_HEIGHT, autoscroll=True):
                        self.text = st.empty()
            if raw:
                self.text.code(out.text + cursor, language=None, wrap_lines=True)
            else:
                self.text.markdown(inert_markdown(out.text) + cursor)
        elif out.finished and out.status != "error":
            self.box.caption("(no text)")
        if out.finished and out.timings is not None and not self.ab:  # A/B: one table for both, below
            self.metrics.markdown(metrics_table([out]))


def metrics_table(outputs: list[Output]) -> str:
    """The worker's timings of each output. Queueing (waiting for a batch row, image decoding, adapter loading) is
    shown apart from the time the request itself took to its first token, so a side that waited does not look
    slower."""
    rows = []
    for o in outputs:
        t = o.timings or {}
        queue = t.get("queue_ms")
        queued = f"{queue:.1f} ms" if queue is not None else "–"
        own = first_token_ms(o.timings)
        first = f"{own:.1f} ms" if own is not None else "–"
        speed = f"{t['tokens_per_s']:.1f}" if t.get("tokens_per_s") is not None else "–"
        tokens = (o.usage or {}).get("completion_tokens", "–")
        finish = o.finish_reason or (o.error or {}).get("code", "–")
        rows.append(f"| {o.label} | {queued} | {first} | {speed} | {tokens} | {finish} | {o.adapter_label} |")
    return ("| | queued | to first token (after the queue) | tokens/s | tokens | finish reason | adapter |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def output_notices(outputs: list[Output], url: str, ab: bool, shown: set[str]) -> None:
    """Each distinct failure once: both sides refused for the same reason is one message, and a worker that is down
    is not explained again below the page's own notice (``shown``)."""
    by_text: dict[tuple[str, str], list[str]] = {}
    for out in outputs:
        if out.error:
            by_text.setdefault(explain(out.error, url, out.adapter), []).append(out.label)
    for (level, text), labels in by_text.items():
        if text in shown:
            continue
        shown.add(text)
        prefix = f"{' and '.join(labels)}: " if ab and len(labels) < len(outputs) else ""
        show_notice(level, prefix + text)


def lanes(record: RunRecord, prefix: str) -> list[OutputView]:
    ab = record.mode == "ab"
    columns = st.columns(len(record.outputs)) if ab else [st.container()]
    views = []
    for i, (column, out) in enumerate(zip(columns, record.outputs)):
        with column:
            views.append(OutputView(f"{prefix}-{i}", out, ab))
    return views



def render_comparison(a: Output, b: Output, key: str) -> None:
    d = first_divergence(a.text, b.text)
    st.markdown(f"**Comparison.** {describe_divergence(d, f'A ({a.adapter_label})', f'B ({b.adapter_label})')}")
    if not d.identical:
        ca, cb = st.columns(2)
        ca.markdown(f"**A continues:** {code_span(d.a_next) if d.a_next else '(it ends there)'}")
        cb.markdown(f"**B continues:** {code_span(d.b_next) if d.b_next else '(it ends there)'}")
    st.caption("Word-level diff: A's words struck through, B's words highlighted.")
    with st.container(key=key, border=True, height=240):
        st.html(diff_html(word_diff(a.text, b.text)))
