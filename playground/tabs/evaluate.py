"""The Evaluate a set tab: A/B over a set of diagrams (:mod:`playground.eval`), its scores, the review of each item
with a verdict, the exports.

The static part of the tab is drawn first (:func:`eval_tab`); a new or resumed evaluation then streams last
(:func:`run_evaluation_live`), into placeholders of the tab, after the other tabs are drawn.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from playground import eval as evaluation_lib
from playground.client import WorkerClient
from playground.diff import inert_markdown
from playground.eval import EvalItem, Evaluation, SetError, item_row, load_set, new_evaluation, summarize
from playground.history import VERDICTS, RunRecord, first_token_ms
from playground.images import data_url_bytes
from playground.runs import BASE_MODEL, Event, Params
from playground.store import HistoryStore
from playground.tabs.common import (
    IMAGE_TYPES,
    SOURCE_TYPES,
    adapter_of,
    adapter_picker,
    history_store,
    render_worker_status,
    run_async,
    settings,
    token,
    upload,
)
from playground.tabs.outputs import lanes, metrics_table, render_comparison


def current_evaluation(store: HistoryStore | None) -> Evaluation | None:
    if store is None or st.session_state.eval_id is None:
        return None
    return evaluation_lib.load(store, int(st.session_state.eval_id))


def set_verdict(eval_id: int, position: int, verdict: str) -> None:
    """Save a verdict and move on to the next item that has none."""
    store, _ = history_store()
    if store is None:
        return
    found = evaluation_lib.load(store, eval_id)
    if found is None:
        return
    item = found.items[position]
    item.verdict = verdict
    evaluation_lib.save_item(store, found, item)
    after = [i.position for i in found.items[position + 1:] + found.items[:position]
             if i.verdict is None and len(i.outputs) == 2]
    st.session_state.eval_item = after[0] if after else position


def move_item(delta: int, total: int) -> None:
    st.session_state.eval_item = (int(st.session_state.eval_item) + delta) % max(1, total)


def eval_tab(limits: dict[str, Any], params: Params, options: list[str], facts: Any,
             store: HistoryStore | None) -> Any:
    """The static part of the tab; returns what to run (a new or resumed evaluation), if anything."""
    config = settings()
    left, right = st.columns([2, 3], gap="large")
    todo = None
    with left:
        st.markdown("**New evaluation**")
        files = st.file_uploader(
            "Diagrams, with references (a .md or .txt of the same name), or a zip of both",
            type=[*IMAGE_TYPES, *SOURCE_TYPES, "zip", "md", "txt"], accept_multiple_files=True,
            key=f"eval_upload-{st.session_state.eval_upload_gen}",
            max_upload_size=max(1, config.eval_max_archive_bytes // 1_000_000))
        loaded = None
        if files:
            try:
                loaded = load_set([(f.name, f.getvalue()) for f in files], max_items=config.eval_max_items,
                                  max_bytes=config.eval_max_archive_bytes,
                                  image_max_bytes=int(limits["image_max_bytes"]), load=upload)
            except SetError as exc:
                st.error(str(exc))
            if loaded is not None:
                st.caption(f"{len(loaded.items)} diagram{'s' if len(loaded.items) != 1 else ''}, "
                           f"{loaded.with_reference} with a reference")
                if loaded.problems:
                    with st.expander(f"{len(loaded.problems)} file(s) left out"):
                        st.markdown("\n".join(f"- {p}" for p in loaded.problems))
        st.text_area("Prompt", key="eval_prompt", height=100)
        st.text_area("System prompt", key="eval_system_prompt", height=68, help="leave empty for none")
        pa, pb = st.columns(2)
        with pa:
            a_name = adapter_picker("A", "eval_a", options, options[1] if len(options) > 1 else BASE_MODEL, facts)
        with pb:
            b_name = adapter_picker("B", "eval_b", options, BASE_MODEL, facts)
        st.caption("The parameters are the sidebar's; every item runs A and B together with the same seed.")
        run_col, stop_col = st.columns([3, 2])
        ready = loaded is not None and bool(loaded.items) and store is not None
        if run_col.button("Run the evaluation", type="primary", key="eval_run", disabled=not ready,
                          width="stretch") and loaded is not None and store is not None:
            if not st.session_state.eval_prompt.strip():
                st.warning("Write a prompt first.")
            else:
                found = new_evaluation(loaded.items, worker=st.session_state.worker_url,
                                       prompt=st.session_state.eval_prompt.strip(),
                                       system_prompt=st.session_state.eval_system_prompt.strip() or None,
                                       params=params, adapter_a=adapter_of(a_name), adapter_b=adapter_of(b_name))
                evaluation_lib.save_new(store, found, [i.image.data for i in loaded.items])
                st.session_state.eval_id = found.id
                st.session_state.eval_item = 0
                todo = found
        stop_slot = stop_col.empty()
        if store is None:
            st.caption("Evaluations are kept in the history, which is unavailable (see above).")
    with right:
        shown_evaluation = todo or current_evaluation(store)
        if shown_evaluation is None:
            st.caption("Upload a set of diagrams (or a zip), pick A and B, and run: every diagram is answered by "
                       "both, scored against its reference, and kept in the history.")
            return None
        found = shown_evaluation
        st.markdown(f"#### Evaluation {found.id} · {found.label}")
        header = st.empty()
        resume = None
        if todo is None and found.status != "done" and any(i.needs_run for i in found.items):
            resume = st.button(f"Resume ({sum(1 for i in found.items if i.needs_run)} items to run)",
                               key="eval_resume", type="primary")
        describe_evaluation(found, header)
        if todo is not None or resume:
            return found, stop_slot, header, st.container()
        render_evaluation(found)
    return None


def describe_evaluation(found: Evaluation, slot: Any) -> None:
    done, total = found.items_done, len(found.items)
    with slot.container():
        st.progress(done / max(1, total), text=f"{done} of {total} items done · {found.status}")
        if found.note and found.status != "done":
            st.caption(found.note)


def render_evaluation(found: Evaluation) -> None:
    summary = summarize(found)
    e1, e2, _ = st.columns([1, 1, 1])
    e1.download_button("Export JSON Lines", evaluation_lib.to_jsonl(found, summary),
                       file_name=f"evaluation-{found.id}.jsonl", mime="application/jsonl", key="eval_jsonl",
                       on_click="ignore", width="stretch")
    e2.download_button("Export Markdown", evaluation_lib.to_markdown(found, summary),
                       file_name=f"evaluation-{found.id}.md", mime="text/markdown", key="eval_md",
                       on_click="ignore", width="stretch")
    review, scores, table = st.tabs(["Review", "Scores", "All items"])
    with review:
        render_review(found)
    with scores:
        render_scores(found, summary)
    with table:
        st.dataframe(pd.DataFrame([item_row(i) for i in found.items]), hide_index=True, width="stretch",
                     key="eval_table")


def render_review(found: Evaluation) -> None:
    total = len(found.items)
    position = min(int(st.session_state.eval_item), total - 1)
    st.session_state.eval_item = position
    item = found.items[position]
    n1, n2, n3 = st.columns([1, 4, 1], vertical_alignment="center")
    n1.button("← Previous", key="eval_prev", on_click=move_item, args=(-1, total), shortcut="Left",
              width="stretch")
    n2.markdown(f"**Item {position + 1} of {total}** · {item.name}"
                + (f" · verdict: **{VERDICTS[item.verdict]}**" if item.verdict else ""))
    n3.button("Next →", key="eval_next", on_click=move_item, args=(1, total), shortcut="Right", width="stretch")
    if len(item.outputs) != 2:
        st.caption("Not run yet.")
        return
    cols = st.columns(4)
    for col, (key, label), shortcut in zip(cols, VERDICTS.items(), ("A", "B", "T", "W")):
        col.button(label, key=f"verdict-{key}", on_click=set_verdict, args=(found.id, position, key),
                   shortcut=shortcut, width="stretch", type="primary" if item.verdict == key else "secondary")
    a, b = item.outputs
    ca, cb = st.columns(2)
    for col, out in ((ca, a), (cb, b)):
        with col:
            score = (item.scores or {}).get(out.label)
            detail = ""
            if score:
                rows = score["rows"]
                detail = f" · chrF {score['chrf']:.1f}" + (f" · rows F1 {rows['f1']:.2f}" if rows else "")
            st.markdown(f"**{out.label} · {out.adapter_label}**{detail}")
            with st.container(border=True, height=320, key=f"review-{out.label}"):
                if out.text:
                    st.markdown(inert_markdown(out.text))
                else:
                    st.caption(f"(no text: {(out.error or {}).get('code', out.status)})")
    if a.has_text and b.has_text:
        render_comparison(a, b, key="eval-diff")
    st.markdown(metrics_table(item.outputs))
    if item.reference is not None:
        with st.expander(f"Reference ({item.reference_name})"):
            st.markdown(inert_markdown(item.reference))
    if item.image.get("thumbnail"):
        with st.expander("Diagram"):
            st.image(data_url_bytes(item.image["thumbnail"]), caption=item.name)


def render_scores(found: Evaluation, summary: dict[str, Any]) -> None:
    if summary["scored"]:
        chrf_s, rows_s = summary["chrf"], summary["rows"]
        m1, m2, m3 = st.columns(3)
        m1.metric("chrF A", f"{chrf_s['A']:.1f}")
        m2.metric("chrF B", f"{chrf_s['B']:.1f}")
        diff = chrf_s["a_minus_b"]
        m3.metric("chrF A − B", f"{diff['mean']:+.1f}", help="mean of the per-item differences",
                  delta=f"95 % interval {diff['low']:+.1f} … {diff['high']:+.1f}", delta_color="off")
        if rows_s["items"]:
            r1, r2, r3 = st.columns(3)
            r1.metric("rows F1 A", f"{rows_s['A']['f1']:.2f}",
                      help=f"precision {rows_s['A']['precision']:.2f}, recall {rows_s['A']['recall']:.2f}")
            r2.metric("rows F1 B", f"{rows_s['B']['f1']:.2f}",
                      help=f"precision {rows_s['B']['precision']:.2f}, recall {rows_s['B']['recall']:.2f}")
            f1 = rows_s["f1_a_minus_b"]
            r3.metric("rows F1 A − B", f"{f1['mean']:+.2f}",
                      delta=f"95 % interval {f1['low']:+.2f} … {f1['high']:+.2f}", delta_color="off")
        st.caption(f"Over the {summary['scored']} items with a reference and both outputs done. chrF: character "
                   f"n-gram F-score (sacrebleu). Rows: the Markdown table's rows found in the reference's.")
    else:
        st.caption("No item has a reference and two finished outputs yet: nothing to score.")
    frames = evaluation_charts(found, summary)
    c1, c2 = st.columns(2)
    if frames.get("diffs") is not None:
        c1.altair_chart(frames["diffs"], width="stretch")
    c2.altair_chart(frames["wins"], width="stretch")
    if frames.get("latency") is not None:
        st.altair_chart(frames["latency"], width="stretch")


def evaluation_charts(found: Evaluation, summary: dict[str, Any]) -> dict[str, Any]:
    charts: dict[str, Any] = {}
    diffs = [{"item": i.position + 1, "name": i.name,
              "chrF A − B": round(i.scores["A"]["chrf"] - i.scores["B"]["chrf"], 2)} for i in found.items if i.scores]
    if diffs:
        frame = pd.DataFrame(diffs)
        charts["diffs"] = alt.Chart(frame, title="chrF A − B per item").mark_bar().encode(
            x=alt.X("item:O", title="item", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("chrF A − B:Q", title=None),
            color=alt.condition("datum['chrF A − B'] >= 0", alt.value("#1f77b4"), alt.value("#d62728")),
            tooltip=["item", "name", "chrF A − B"]).properties(height=220)
    verdicts, wins = summary["verdicts"], summary["chrf"]["wins"]
    rows = [{"by": "your verdicts", "outcome": VERDICTS[k], "items": verdicts[k]} for k in VERDICTS]
    rows += [{"by": "your verdicts", "outcome": "not judged", "items": verdicts["unjudged"]}]
    if summary["scored"]:
        rows += [{"by": "chrF", "outcome": label, "items": wins[key]}
                 for key, label in (("A", "A better"), ("B", "B better"), ("tie", "tie"))]
    charts["wins"] = alt.Chart(pd.DataFrame(rows), title="Wins, ties, losses").mark_bar().encode(
        y=alt.Y("by:N", title=None), x=alt.X("items:Q", title="items", axis=alt.Axis(tickMinStep=1)),
        color=alt.Color("outcome:N", title=None, sort=[*VERDICTS.values(), "not judged"]),
        tooltip=["by", "outcome", "items"]).properties(height=160)
    latency = []
    for item in found.items:
        for out in item.outputs:
            if out.status == "done" and out.timings:
                latency.append({"side": f"{out.label} · {out.adapter_label}", "measure": "to first token (ms)",
                                "value": first_token_ms(out.timings)})
                latency.append({"side": f"{out.label} · {out.adapter_label}", "measure": "tokens/s",
                                "value": out.timings.get("tokens_per_s")})
    if latency:
        # the title on the facet, not on the inner chart: there Vega-Lite repeats it above every row
        charts["latency"] = alt.Chart(pd.DataFrame(latency)).mark_boxplot(extent="min-max").encode(
            x=alt.X("value:Q", title=None), y=alt.Y("side:N", title=None), color=alt.Color("side:N", legend=None),
            tooltip=["side", "value"]).properties(height=90).facet(
            row=alt.Row("measure:N", title=None), title="Latency per item (after the queue)").resolve_scale(
            x="independent")
    return charts


def run_evaluation_live(found: Evaluation, store: HistoryStore, stop_slot: Any, header: Any,
                        status_slot: Any) -> None:
    stop_slot.button("Stop", key="eval_stop", help="stop the evaluation (finished items are kept; resume later)",
                     width="stretch")
    current = st.empty()
    views: dict[str, Any] = {"item": None, "views": []}

    def on_events(item: EvalItem, events: list[Event]) -> None:
        if views["item"] != item.position:
            views["item"] = item.position
            with current.container():
                st.markdown(f"**Item {item.position + 1} of {len(found.items)}** · {item.name}")
                record = RunRecord(id=0, mode="ab", worker=found.worker, settings={}, outputs=item.outputs)
                views["views"] = lanes(record, f"eval-lane-{item.position}")
        for event in events:
            if event.kind == "progress" and event.lane is not None:
                views["views"][event.lane].progress(event.detail)
            elif event.kind == "status":
                with status_slot.container():
                    render_worker_status(event.detail)
        for view, out in zip(views["views"], item.outputs):
            view.show(out)

    def on_item(item: EvalItem) -> None:
        evaluation_lib.save_item(store, found, item)
        describe_evaluation(found, header)

    async def go() -> None:
        async with WorkerClient(found.worker, token=token()) as client:
            await evaluation_lib.run_evaluation(client, found, evaluation_lib.stored_image(store),
                                                on_events=on_events, on_item=on_item)

    st.session_state.job = "evaluation"
    try:
        found.worker = st.session_state.worker_url
        run_async(go())
    finally:
        try:
            evaluation_lib.save_header(store, found)
        finally:
            st.session_state.job = None
    current.empty()
    stop_slot.empty()
    describe_evaluation(found, header)
    if found.note and found.status != "done":
        st.warning(f"The evaluation stopped: {found.note}.")
    render_evaluation(found)
