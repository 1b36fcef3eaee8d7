"""The History tab: past runs and evaluations (newest first, filtered), charts of the runs' timings, exports; a run
reopens in the Run tab or runs again with its settings and seed, an evaluation reopens in its tab."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from playground.history import VERDICTS, RunRecord, chart_rows, to_json, to_markdown
from playground.images import data_url_bytes, load_image
from playground.runs import Params
from playground.store import HistoryStore
from playground.tabs.common import AB, EVAL_TAB, RUN_TAB, SINGLE, history_store, pick_of
from playground.tabs.outputs import metrics_table

HISTORY_PAGE = 50


def reopen_run(run_id: int) -> None:
    store, _ = history_store()
    if store is not None and (record := store.run(run_id)) is not None:
        st.session_state.last_run = record
        st.toast(f"Run {run_id} is open in the “{RUN_TAB}” tab.")


def repeat_run(run_id: int) -> None:
    """Put a stored run's settings, adapters, seed and image back into the Run tab, and run it again."""
    store, _ = history_store()
    record = store.run(run_id) if store is not None else None
    if store is None or record is None:
        return
    s = st.session_state
    s.prompt = record.settings.get("prompt", "")
    s.system_prompt = record.settings.get("system_prompt") or ""
    for key in Params().request_fields():
        if key in record.settings:
            s[key] = record.settings[key]
    if record.mode == "ab":
        s.mode, s.adapter_a, s.adapter_b = AB, pick_of(record.outputs[0].adapter), pick_of(record.outputs[1].adapter)
    else:
        s.mode, s.adapter = SINGLE, pick_of(record.outputs[0].adapter)
    data = store.image(record.image["sha256"]) if record.image else None
    # The stored picture (a diagram source's drawing too: it is not drawn again), with the source it came from.
    s.image_source = replace(load_image(record.image["name"], data), source=record.image.get("source")) \
        if record.image and data is not None else None
    s.upload_gen += 1
    s.pending_go = True
    st.toast(f"Run {run_id} runs again in the “{RUN_TAB}” tab, with seed {record.settings.get('seed')}.")


def reopen_evaluation(eval_id: int) -> None:
    st.session_state.eval_id = eval_id
    st.session_state.eval_item = 0
    st.toast(f"Evaluation {eval_id} is open in the “{EVAL_TAB}” tab.")


def history_tab(store: HistoryStore | None, url: str) -> None:
    if store is None:
        st.caption("The history is unavailable (see above).")
        return
    f1, f2, f3, f4 = st.columns([1, 1, 1, 1])
    kind = f1.selectbox("Show", ["Runs and evaluations", "Runs", "Evaluations"], key="hist_kind")
    adapter = f2.selectbox("Adapter", ["(any)", *store.adapters()], key="hist_adapter")
    since: date | None = f3.date_input("From", value=None, key="hist_since")
    until: date | None = f4.date_input("To", value=None, key="hist_until")
    kinds = {"Runs": "run", "Evaluations": "evaluation"}
    entries = store.list_entries(kind=kinds.get(kind), adapter=None if adapter == "(any)" else adapter, since=since,
                                 until=until, limit=HISTORY_PAGE)
    runs = store.runs([e.id for e in entries if e.kind == "run"])
    total = len(entries)
    st.markdown(f"**{total}{'+' if total == HISTORY_PAGE else ''} entr{'ies' if total != 1 else 'y'}** "
                f"(newest first; kept in `{store.path}`)")
    if not entries:
        st.caption("Runs and evaluations appear here, with their settings, outputs and timings — also stopped and "
                   "failed ones — and stay after the playground restarts.")
        return
    rows = chart_rows(runs)
    if rows:
        render_run_charts(rows)
    if runs:
        e1, e2, _ = st.columns([1, 1, 3])
        e1.download_button("Export runs as JSON", to_json(runs, worker=url), file_name="playground-history.json",
                           mime="application/json", key="export_json", on_click="ignore", width="stretch")
        e2.download_button("Export runs as Markdown", to_markdown(runs, worker=url), key="export_md",
                           file_name="playground-history.md", mime="text/markdown", on_click="ignore",
                           width="stretch")
    by_id = {r.id: r for r in runs}
    for entry in entries:
        label = f"{'Run' if entry.kind == 'run' else 'Evaluation'} {entry.id} · {entry.title} · {entry.status} · " \
                f"{entry.created_at}"
        with st.expander(label):
            if entry.kind == "evaluation":
                st.button("Open in “Evaluate a set”", key=f"open-eval-{entry.id}", on_click=reopen_evaluation,
                          args=(entry.id,))
                continue
            record = by_id.get(entry.id)
            if record is None:
                continue
            render_history_run(record)


def render_history_run(record: RunRecord) -> None:
    left, right = st.columns([1, 4])
    if record.image and record.image.get("thumbnail"):
        source = record.image.get("source")
        left.image(data_url_bytes(record.image["thumbnail"]), caption=record.image["name"] + (
            f" ({source['label']} source, sha256 {source['sha256'][:12]}…)" if source else ""))
    elif record.image:
        left.caption(f"{record.image['name']} (no preview)")
    else:
        left.caption("no image")
    left.button("Open", key=f"open-run-{record.id}", on_click=reopen_run, args=(record.id,), width="stretch")
    left.button("Repeat (same seed)", key=f"repeat-run-{record.id}", on_click=repeat_run, args=(record.id,),
                width="stretch")
    settings = record.settings
    right.caption(" · ".join(f"{k} {settings[k]}" for k in Params().request_fields() if k in settings)
                  + (f" · verdict: {VERDICTS[record.verdict]}" if record.verdict else ""))
    right.markdown(metrics_table(record.outputs))
    for out in record.outputs:
        right.markdown(f"**{out.label} · {out.adapter_label}** ({out.status})")
        if out.error:
            right.caption(f"error `{out.error['code']}`: {out.error['message']}")
        if out.text:
            right.code(out.text, language=None, wrap_lines=True)


def render_run_charts(rows: list[dict[str, Any]]) -> None:
    """Time to first token (after the queue) and tokens/s per run: run numbers upright, A/B runs a shape of their
    own, titles above the charts (an axis title of a short chart gets cut)."""
    frame = pd.DataFrame(rows)
    frame["kind"] = frame["mode"].map({"single": "single run", "ab": "A/B run"})
    base = alt.Chart(frame).encode(
        x=alt.X("run:O", title="run", axis=alt.Axis(labelAngle=0, labelOverlap=True)),
        color=alt.Color("adapter:N", title="adapter"),
        shape=alt.Shape("kind:N", title=None, scale=alt.Scale(domain=["single run", "A/B run"],
                                                               range=["circle", "triangle-up"])),
        tooltip=["run", "kind", "lane", "adapter", "first_token_ms", "queue_ms", "tokens_per_s"])
    c1, c2 = st.columns(2)
    c1.altair_chart(base.mark_point(filled=True, size=80).encode(y=alt.Y("first_token_ms:Q", title=None))
                    .properties(height=200, title="Time to first token, after the queue (ms)"), width="stretch")
    c2.altair_chart(base.mark_point(filled=True, size=80).encode(y=alt.Y("tokens_per_s:Q", title=None))
                    .properties(height=200, title="Tokens/s"), width="stretch")
