"""The Run tab: one diagram, one output or A/B side by side; the controls on the left, the stream on the right.

A run is recorded in the history before it starts and again when it ends — also when it is stopped (Stop, or any
other control: Streamlit stops the script run) or fails — with the text produced until then.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from diagrams import default_renderer
from playground.client import WorkerClient, user_message
from playground.history import VERDICTS, Output, RunRecord
from playground.images import ImageInput, UploadError, human_bytes, sample_diagram
from playground.runs import BASE_MODEL, Event, Params, WorkerInfo, finish_record, run_outputs
from playground.store import HistoryStore
from playground.tabs.common import (
    AB,
    IMAGE_TYPES,
    SINGLE,
    SOURCE_TYPES,
    adapter_of,
    adapter_picker,
    history_store,
    render_status,
    render_worker_status,
    run_async,
    token,
    upload,
    worker_info,
)
from playground.tabs.outputs import OutputView, lanes, metrics_table, output_notices, render_comparison

STATUS_EVERY_S = 1.0  # while a run streams, the sidebar's status is refreshed this often


def use_sample() -> None:
    """The sample replaces whatever was uploaded (the uploader is emptied), so the click always does something."""
    if "sample_image" not in st.session_state:
        st.session_state.sample_image = sample_diagram()
    st.session_state.image_source = st.session_state.sample_image
    st.session_state.upload_gen += 1


def clear_image() -> None:
    st.session_state.image_source = None
    st.session_state.upload_gen += 1



def renderers_note() -> str:
    """Which diagram sources this playground draws, and what is missing for the others (and how to install it)."""
    available = default_renderer().available()
    ready = [kind.label for kind, missing in available.items() if missing is None]
    note = f"Diagram sources are drawn as pictures first: {', '.join(ready) or 'none can be here'}."
    absent = [f"{kind.label}: {missing}" for kind, missing in available.items() if missing is not None]
    return note + (" Cannot draw " + "; ".join(absent) + "." if absent else "")


def current_image(uploaded: Any) -> tuple[ImageInput | None, str | None]:
    """The uploaded file (drawn first if it is a diagram source), else the image picked without the uploader (the
    sample, a repeated run's image); or why the upload cannot be used."""
    if uploaded is not None:
        try:
            return upload(uploaded.name, uploaded.getvalue()), None
        except UploadError as exc:
            return None, str(exc)
    source: ImageInput | None = st.session_state.image_source
    return source, None


def upload_limit_mb(image_max_bytes: int) -> int:
    """The uploader's per-file limit: the worker's image limit in whole megabytes (Streamlit's unit), rounded down
    so that the uploader never takes a file the worker would refuse."""
    return max(1, image_max_bytes // 1_000_000)



def render_record(record: RunRecord, views: list[OutputView], raw: bool, shown: set[str],
                  store: HistoryStore | None) -> None:
    for view, out in zip(views, record.outputs):
        view.show(out, raw=raw)
    output_notices(record.outputs, record.worker, record.mode == "ab", shown)
    if any(o.status == "stopped" for o in record.outputs):
        st.info("Stopped. The text produced until then is kept in the history.")
    if record.mode == "ab" and len(record.outputs) == 2 and all(o.has_text for o in record.outputs):
        render_comparison(record.outputs[0], record.outputs[1], key="ab-diff")
        st.markdown(metrics_table(record.outputs))
        if store is not None and record.id:
            st.segmented_control("Your verdict", list(VERDICTS), format_func=lambda key: VERDICTS[key],
                                 key=f"run-verdict-{record.id}", on_change=save_run_verdict, args=(record,),
                                 default=record.verdict)


def save_run_verdict(record: RunRecord) -> None:
    store, _ = history_store()
    record.verdict = st.session_state.get(f"run-verdict-{record.id}")
    if store is not None:
        store.update_run(record)



def run_live(record: RunRecord, views: list[OutputView], messages: list[dict[str, Any]], params: Params,
             raw: bool, status_slot: Any) -> None:
    ticker = st.empty()
    changed: set[int] = set()

    def on_events(events: list[Event]) -> None:
        elapsed = None
        for event in events:
            if event.kind == "progress" and event.lane is not None:
                views[event.lane].progress(event.detail)
            elif event.kind == "tick":
                elapsed = event.detail
            elif event.kind == "status":
                with status_slot.container():
                    render_worker_status(event.detail)
            if event.lane is not None:
                changed.add(event.lane)
        for lane in sorted(changed):
            views[lane].show(record.outputs[lane], raw=raw)
        changed.clear()
        if elapsed is not None:
            ticker.caption(f"Elapsed {elapsed:.1f} s")

    async def go() -> None:
        async with WorkerClient(record.worker, token=token()) as client:
            await run_outputs(client, record.outputs, messages, params, system_prompt=record.settings["system_prompt"],
                              on_events=on_events, status_every_s=STATUS_EVERY_S)

    run_async(go())
    ticker.empty()


def start_run(image: ImageInput | None, params: Params, picks: list[tuple[str, str]], ab: bool,
              store: HistoryStore | None) -> RunRecord:
    record = RunRecord(
        id=0, mode="ab" if ab else "single", worker=st.session_state.worker_url,
        settings={"prompt": st.session_state.prompt.strip(),
                  "system_prompt": st.session_state.system_prompt.strip() or None, **params.request_fields()},
        outputs=[Output(label=label, adapter=adapter_of(name)) for label, name in picks],
        image=None if image is None else image.record(),
    )
    if store is not None:
        store.add_run(record, image.data if image is not None else None)  # recorded before it starts
    st.session_state.last_run = record
    return record


def run_tab(info: WorkerInfo, limits: dict[str, Any], params: Params, options: list[str], facts: Any,
            store: HistoryStore | None, status_slot: Any, shown: set[str]) -> None:
    left, right = st.columns([2, 3], gap="large")
    with left:
        image_max = int(limits["image_max_bytes"])
        uploaded = st.file_uploader(f"Diagram (PNG, JPEG or WebP, at most {human_bytes(image_max)}; or a BPMN, "
                                    f"Mermaid, Graphviz, PlantUML or SVG source)", type=IMAGE_TYPES + SOURCE_TYPES,
                                    key=f"upload-{st.session_state.upload_gen}",
                                    max_upload_size=upload_limit_mb(image_max))
        st.caption(renderers_note())
        b1, b2 = st.columns(2)
        b1.button("Use a sample diagram", key="sample", on_click=use_sample, width="stretch")
        image, refused = current_image(uploaded)
        if image is not None and uploaded is None:
            b2.button("Clear the diagram", key="clear_image", on_click=clear_image, width="stretch")
        if refused is not None:
            st.error(refused)
        elif image is None:
            st.caption("No diagram yet: the prompt is sent alone.")
        elif image.mime is None:
            st.warning(f"{image.describe()}. This is not a PNG, JPEG or WebP file; the worker will refuse it.")
        else:
            st.image(image.data, width=240)
            st.caption(image.describe())
            if image.size > image_max:
                st.warning(f"The image is larger than the worker's limit of {human_bytes(image_max)}.")
        st.text_area("Prompt", key="prompt", height=100)
        st.text_area("System prompt", key="system_prompt", height=68, help="leave empty for none")
        mode = st.radio("Mode", [SINGLE, AB], key="mode", horizontal=True,
                        help="A/B: two adapters (or an adapter and the base model) on the same image, prompt, "
                             "parameters and seed, streaming at the same time")
        if mode == AB:
            pick_a, pick_b = st.columns(2)
            with pick_a:
                a_name = adapter_picker("A", "adapter_a", options, options[1] if len(options) > 1 else BASE_MODEL,
                                        facts)
            with pick_b:
                b_name = adapter_picker("B", "adapter_b", options, options[2] if len(options) > 2 else BASE_MODEL,
                                        facts)
            picks = [("A", a_name), ("B", b_name)]
        else:
            picks = [("output", adapter_picker("Adapter", "adapter", options, BASE_MODEL, facts))]
        go_col, stop_col, raw_col = st.columns([3, 2, 3], vertical_alignment="center")
        go = go_col.button("Compare A/B" if mode == AB else "Generate", type="primary", key="generate",
                           width="stretch")
        stop_slot = stop_col.empty()
        raw = raw_col.toggle("Raw text", key="raw", help="show the text as the model wrote it instead of Markdown")
    go = go or bool(st.session_state.pop("pending_go", False))
    prompt = st.session_state.prompt.strip()
    if go and not prompt:
        with left:
            st.warning("Write a prompt first.")
        go = False
    with right:
        if not go:
            record = st.session_state.last_run
            if record is None:
                st.caption("The output streams here. Pick a diagram, an adapter (or two, in A/B mode) and Generate.")
                return
            st.caption(f"Run {record.id or '–'} · {'A/B' if record.mode == 'ab' else 'single'} · "
                       f"{record.started_at}")
            render_record(record, lanes(record, "lane"), raw, shown, store)
            return
        record = start_run(image, params, picks, mode == AB, store)
        st.caption(f"Run {record.id or '–'} · {'A/B' if record.mode == 'ab' else 'single'} · {record.started_at}")
        views = lanes(record, "lane")
        for view, out in zip(views, record.outputs):
            view.show(out, raw=raw)
        stop_slot.button("Stop", key="stop", help="cancel the generation (the text so far is kept)", width="stretch")
        st.session_state.job = "run"
        try:
            messages = [user_message(prompt, image=image.data if image is not None else None)]
            run_live(record, views, messages, params, raw, status_slot)
        finally:  # also when Streamlit stops this run (Stop): the next run waits for the record to be final
            for out in record.outputs:
                if not out.finished:
                    out.status = "stopped"
                    out.error = {"code": "interrupted", "message": "the run was interrupted before it finished",
                                 "retryable": True}
            finish_record(record)
            try:
                if store is not None:
                    store.update_run(record)
            finally:
                st.session_state.job = None
        stop_slot.empty()
        render_record(record, views, raw, shown, store)
    with status_slot.container():  # what the run changed: loaded adapters, their use
        render_status(worker_info(refresh=True))
