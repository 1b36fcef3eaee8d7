"""The playground: upload a diagram, stream an answer, compare two adapters side by side, keep a history.

    INFERENCE_WS_URL=ws://localhost:8765 streamlit run playground/app.py

This file renders. Talking to the worker is :mod:`playground.client`; running one or two streams is
:mod:`playground.runs`; the history and its exports, the A/B comparison and images are pure modules beside it.

Streaming happens inside the script run: ``asyncio.run`` streams every output concurrently and the callback updates
``st.empty()`` placeholders. Clicking Stop (or any other control) while it streams makes Streamlit stop that run
(``StopException`` at its next ``st`` call) and start the next run at once, in another thread (``runner.fastReruns``).
The stopped run cancels its generations on the worker and records them as stopped with their partial text
(:func:`playground.runs.run_outputs`); the next run waits for that record to be final before it renders.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `streamlit run playground/app.py` runs this file as a script, not as a module
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import altair as alt
import pandas as pd
import streamlit as st

from inference_worker.protocol import AdapterItem, AdapterProgress
from playground.client import DEFAULT_URL, WorkerClient, describe_progress, user_message
from playground.diff import describe_divergence, diff_html, first_divergence, inert_markdown, word_diff
from playground.history import Output, RunRecord, chart_rows, code_span, next_id, to_json, to_markdown
from playground.images import ImageInput, data_url_bytes, human_bytes, load_image, sample_diagram, thumbnail_data_url
from playground.runs import (
    BASE_MODEL,
    Event,
    Params,
    WorkerInfo,
    explain,
    fetch_worker_info,
    finish_record,
    run_outputs,
)

DEFAULT_SYSTEM_PROMPT = (
    "You read business process diagrams (BPMN, flowcharts, swim-lane diagrams) and describe exactly what they show. "
    "Do not invent steps that are not in the diagram."
)
DEFAULT_PROMPT = (
    "Describe this process diagram as a Markdown table with one row per step, in the order the process runs. "
    "Columns: Step (number), Activity, Role (the lane or actor who does it), Next (the step or steps that follow; "
    "for a decision, the condition of each branch). After the table, name the start and end events."
)
# When the worker cannot be asked, the controls use the worker's documented defaults.
FALLBACK_LIMITS: dict[str, Any] = {"max_new_tokens": 2048, "default_max_tokens": 512, "temperature": [0.0, 5.0],
                                   "top_p": [0.0, 1.0], "repetition_penalty": [0.0, 10.0],
                                   "image_max_bytes": 10 * 1024 * 1024}
STATUS_TIMEOUT_S = 3.0  # every page run asks for the status: an unreachable host must not hold the page long
MAX_SEED = 2**53 - 1  # the largest integer a browser number input holds exactly
SINGLE, AB = "Single", "A/B"

st.set_page_config(page_title="Diagram playground", page_icon="🧭", layout="wide")

# ---- state, set once per session ---------------------------------------------------------------------------------
if "history" not in st.session_state:
    st.session_state.history = []  # list[RunRecord], oldest first
if "worker_url" not in st.session_state:
    st.session_state.worker_url = os.environ.get("INFERENCE_WS_URL", DEFAULT_URL)
# The worker's shared secret, when it has one (INFERENCE_AUTH_TOKEN); never shown in the page.
TOKEN = os.environ.get("INFERENCE_AUTH_TOKEN") or None
if "adapters" not in st.session_state:
    st.session_state.adapters = None  # (url, list[AdapterItem]) from the last list_adapters that worked
if "prompt" not in st.session_state:
    st.session_state.prompt = DEFAULT_PROMPT
if "system_prompt" not in st.session_state:
    st.session_state.system_prompt = DEFAULT_SYSTEM_PROMPT
if "use_sample" not in st.session_state:
    st.session_state.use_sample = False
for _key, _value in Params().request_fields().items():
    if _key not in st.session_state:
        st.session_state[_key] = _value


def settle_previous_run(history: list[RunRecord], timeout_s: float = 8.0) -> None:
    """Wait for a run that Streamlit is stopping in another thread to record its outcome (a few seconds at most)."""
    if not history or all(o.finished for o in history[-1].outputs):
        return
    deadline = time.monotonic() + timeout_s
    with st.spinner("Stopping the previous run…"):
        while not all(o.finished for o in history[-1].outputs) and time.monotonic() < deadline:
            time.sleep(0.05)


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion in this script run (each script run gets its own event loop)."""
    return asyncio.run(coro)


# ---- worker ------------------------------------------------------------------------------------------------------
def worker_info(refresh: bool) -> WorkerInfo:
    """The worker's status (every run: it is cheap) and its adapters (once per URL, on Refresh, after a run)."""
    url = st.session_state.worker_url
    cached = st.session_state.adapters
    want_adapters = refresh or cached is None or cached[0] != url
    info = run_async(fetch_worker_info(url, with_adapters=want_adapters, token=TOKEN, timeout_s=STATUS_TIMEOUT_S))
    if info.adapters is not None:
        st.session_state.adapters = (url, info.adapters)
    elif info.up and cached is not None and cached[0] == url:
        info.adapters = cached[1]
    return info


def show_notice(level: str, text: str) -> None:
    {"error": st.error, "warning": st.warning, "info": st.info}.get(level, st.info)(text)


def render_status(info: WorkerInfo) -> None:
    if info.error is not None:
        show_notice(*explain(info.error, info.url))
        return
    status = info.status
    assert status is not None
    if status.ready:
        st.success("Ready", icon="✅")
    else:
        st.warning("Not ready")
    st.markdown(
        f"**Model** `{status.model}` ({status.model_type})  \n"
        f"**Device** {status.device} · {status.dtype} · {'vision' if status.vision else 'text only'}  \n"
        f"**Running** {status.running} of {status.max_running} · **queued** {status.queued} of {status.max_queue}  \n"
        f"**Connections** {status.connections}"
    )
    st.markdown(f"**Loaded adapters** ({len(status.loaded_adapters)} of {status.max_loaded_adapters})")
    if status.loaded_adapters:
        st.markdown("\n".join(
            f"- `{a.name}`{' (default)' if a.default else ''}: rank {a.rank}, {a.connections} connections, "
            f"{a.running} running" for a in status.loaded_adapters))
    else:
        st.caption("none: the base model only")
    if info.adapters_error is not None:
        show_notice(*explain(info.adapters_error, info.url))


def adapter_facts(name: str, adapters: dict[str, AdapterItem], model: str | None) -> str:
    if name == BASE_MODEL:
        return f"The base model{f' `{model}`' if model else ''}, no adapter."
    item = adapters.get(name)
    if item is None:
        return "Not in the adapter store's list."
    parts = [f"rank {item.rank}", f"alpha {item.alpha:g}" if item.alpha is not None else None,
             f"targets {', '.join(item.target_modules)}" if item.target_modules else None,
             human_bytes(item.size) if item.size is not None else None,
             f"digest `{item.digest[:12]}`" if item.digest else None,
             f"base `{item.base_model}`" if item.base_model else None,
             f"PEFT {item.peft_version}" if item.peft_version else None,
             f"created {item.created[:10]}" if item.created else None,
             "in memory" if item.loaded else "not loaded yet"]
    return " · ".join(p for p in parts if p)


# ---- inputs ------------------------------------------------------------------------------------------------------
def use_sample() -> None:
    st.session_state.use_sample = True


def current_image(uploaded: Any) -> ImageInput | None:
    """The uploaded file, else the sample diagram if asked for (tests can also set ``use_sample``)."""
    if uploaded is not None:
        return load_image(uploaded.name, uploaded.getvalue())
    if st.session_state.use_sample:
        if "sample_image" not in st.session_state:
            st.session_state.sample_image = sample_diagram()
        image: ImageInput = st.session_state.sample_image
        return image
    return None


def clamp_state(key: str, low: float, high: float | None) -> None:
    value = st.session_state[key]
    if value < low or (high is not None and value > high):
        st.session_state[key] = type(value)(min(max(value, low), high if high is not None else value))


def parameter_controls(limits: dict[str, Any]) -> Params:
    max_new = int(limits.get("max_new_tokens", FALLBACK_LIMITS["max_new_tokens"]))
    t_low, t_high = limits.get("temperature", FALLBACK_LIMITS["temperature"])
    p_high = float(limits.get("top_p", FALLBACK_LIMITS["top_p"])[1])
    r_high = float(limits.get("repetition_penalty", FALLBACK_LIMITS["repetition_penalty"])[1])
    # top_p and repetition_penalty must be > 0 (the limits give the closed range's ends).
    bounds = {"temperature": (float(t_low), float(t_high)), "top_p": (0.01, p_high), "top_k": (0, None),
              "max_tokens": (1, max_new), "seed": (0, MAX_SEED), "repetition_penalty": (0.01, r_high)}
    for key, (low, high) in bounds.items():
        clamp_state(key, low, high)
    cols = st.columns(6)
    cols[0].slider("Temperature", min_value=float(t_low), max_value=float(t_high), step=0.05, key="temperature",
                   help="0 is greedy: deterministic, the seed does not matter")
    cols[1].slider("top_p", min_value=0.01, max_value=p_high, step=0.01, key="top_p")
    cols[2].number_input("top_k", min_value=0, step=1, key="top_k", help="0 disables top-k")
    cols[3].number_input("Max tokens", min_value=1, max_value=max_new, step=16, key="max_tokens",
                         help=f"the worker allows at most {max_new}")
    cols[4].number_input("Seed", min_value=0, max_value=MAX_SEED, step=1, key="seed",
                         help="the same seed reproduces a sampled run (both sides of an A/B run use it)")
    cols[5].number_input("Repetition penalty", min_value=0.01, max_value=r_high, step=0.05, format="%.2f",
                         key="repetition_penalty")
    s = st.session_state
    return Params(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                  max_tokens=int(s.max_tokens), seed=int(s.seed), repetition_penalty=float(s.repetition_penalty))


def adapter_picker(label: str, key: str, options: list[str], default: str, facts: Any) -> str:
    if st.session_state.get(key) not in options:
        st.session_state[key] = default
    picked: str = st.selectbox(label, options, key=key)
    st.caption(facts(picked))
    return picked


# ---- outputs -----------------------------------------------------------------------------------------------------
class OutputView:
    """The placeholders of one output: adapter loading, status line, text, metrics."""

    def __init__(self, index: int, out: Output, ab: bool) -> None:
        st.markdown(f"#### {out.label} · {out.adapter_label}" if ab else f"#### {out.adapter_label}")
        self.load = st.empty()
        self.status = st.empty()
        with st.container(key=f"lane-{index}", border=True, height=420, autoscroll=True):
            self.text = st.empty()
        self.metrics = st.empty()

    def progress(self, progress: AdapterProgress) -> None:
        fraction = min(1.0, progress.bytes / progress.total) if progress.total else 0.0
        self.load.progress(fraction, text=f"Adapter {progress.adapter_path}: {describe_progress(progress)}")

    def show(self, out: Output, raw: bool = False) -> None:
        if out.adapter_load is not None and out.status != "loading":
            load = out.adapter_load
            self.load.caption(f"Adapter loaded ({'cached' if load['cached'] else 'fetched'}, {load['load_ms']} ms)")
        line = {"pending": "waiting", "loading": "loading the adapter…", "streaming": "streaming…",
                "done": f"done ({out.finish_reason})", "stopped": "stopped", "error": "failed"}[out.status]
        self.status.caption(line)
        cursor = " ▌" if out.status == "streaming" else ""
        if not out.text:
            self.text.caption("(no text yet)" if not out.finished else "(no text)")
        elif raw:
            self.text.code(out.text + cursor, language=None, wrap_lines=True)
        else:
            self.text.markdown(inert_markdown(out.text) + cursor)
        if out.finished:
            self.metrics.markdown(metrics_table([out]))


def metrics_table(outputs: list[Output]) -> str:
    """The worker's timings of each output. Queueing (waiting for a batch row, image decoding, adapter loading) is
    shown apart from the time the request itself took to its first token, so a side that waited does not look
    slower."""
    rows = []
    for o in outputs:
        t = o.timings or {}
        queue, ttft = t.get("queue_ms"), t.get("ttft_ms")
        queued = f"{queue:.1f} ms" if queue is not None else "–"
        first = f"{ttft - (queue or 0.0):.1f} ms" if ttft is not None else "–"
        speed = f"{t['tokens_per_s']:.1f}" if t.get("tokens_per_s") is not None else "–"
        tokens = (o.usage or {}).get("completion_tokens", "–")
        finish = o.finish_reason or (o.error or {}).get("code", "–")
        rows.append(f"| {o.label} | {queued} | {first} | {speed} | {tokens} | {finish} | {o.adapter_label} |")
    return ("| | queued | to first token (after the queue) | tokens/s | tokens | finish reason | adapter |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def render_record(record: RunRecord, views: list[OutputView], raw: bool) -> None:
    for view, out in zip(views, record.outputs):
        view.show(out, raw=raw)
    for out in record.outputs:
        if out.error:
            level, text = explain(out.error, record.worker, out.adapter)
            show_notice(level, (f"{out.label}: " if record.mode == "ab" else "") + text)
    if any(o.status == "stopped" for o in record.outputs):
        st.info("Stopped. The text produced until then is kept in the history.")
    if record.mode == "ab" and len(record.outputs) == 2 and all(o.has_text for o in record.outputs):
        render_comparison(record)


def render_comparison(record: RunRecord) -> None:
    a, b = record.outputs
    st.subheader("Comparison")
    d = first_divergence(a.text, b.text)
    st.markdown(describe_divergence(d, f"A ({a.adapter_label})", f"B ({b.adapter_label})"))
    if not d.identical:
        ca, cb = st.columns(2)
        ca.markdown(f"**A continues:** {code_span(d.a_next) if d.a_next else '(it ends there)'}")
        cb.markdown(f"**B continues:** {code_span(d.b_next) if d.b_next else '(it ends there)'}")
    with st.container(key="ab-diff"):
        st.caption("Word-level diff: A's words struck through, B's words highlighted.")
        st.html(diff_html(word_diff(a.text, b.text)))
    st.markdown(metrics_table([a, b]))


def run_live(record: RunRecord, views: list[OutputView], messages: list[dict[str, Any]], params: Params,
             system_prompt: str | None, raw: bool) -> None:
    ticker = st.empty()
    changed: set[int] = set()

    def on_events(events: list[Event]) -> None:
        elapsed = None
        for event in events:
            if event.kind == "progress" and event.lane is not None:
                views[event.lane].progress(event.detail)
            elif event.kind == "tick":
                elapsed = event.detail
            if event.lane is not None:
                changed.add(event.lane)
        for lane in sorted(changed):
            views[lane].show(record.outputs[lane], raw=raw)
        changed.clear()
        if elapsed is not None:
            ticker.caption(f"Elapsed {elapsed:.1f} s")

    async def go() -> None:
        async with WorkerClient(record.worker, token=TOKEN) as client:
            await run_outputs(client, record.outputs, messages, params, system_prompt=system_prompt,
                              on_events=on_events)

    run_async(go())
    ticker.empty()


# ---- history -----------------------------------------------------------------------------------------------------
def render_history(history: list[RunRecord], url: str) -> None:
    st.subheader(f"History · {len(history)} run{'s' if len(history) != 1 else ''}")
    if not history:
        st.caption("Runs appear here: settings, outputs and timings, including stopped and failed runs.")
        return
    rows = chart_rows(history)
    if rows:
        frame = pd.DataFrame(rows)
        base = alt.Chart(frame).encode(
            x=alt.X("run:O", title="run"), color=alt.Color("adapter:N", title="adapter"),
            tooltip=["run", "lane", "adapter", "ttft_ms", "tokens_per_s"])
        c1, c2 = st.columns(2)
        c1.altair_chart(base.mark_line(point=True).encode(y=alt.Y("ttft_ms:Q", title="time to first token (ms)"))
                        .properties(height=180), width="stretch")
        c2.altair_chart(base.mark_line(point=True).encode(y=alt.Y("tokens_per_s:Q", title="tokens/s"))
                        .properties(height=180), width="stretch")
    e1, e2, e3 = st.columns([1, 1, 4])
    e1.download_button("Export JSON", to_json(history, worker=url), file_name="playground-history.json",
                       mime="application/json", key="export_json", on_click="ignore")
    e2.download_button("Export Markdown", to_markdown(history, worker=url), file_name="playground-history.md",
                       mime="text/markdown", key="export_md", on_click="ignore")
    e3.button("Clear history", key="clear_history", on_click=lambda: st.session_state.history.clear())
    for record in reversed(history):
        adapters = " vs ".join(o.adapter_label for o in record.outputs)
        with st.expander(f"Run {record.id} · {'A/B' if record.mode == 'ab' else 'single'} · {adapters} · "
                         f"{record.status} · {record.started_at}"):
            left, right = st.columns([1, 4])
            if record.image and record.image.get("thumbnail"):
                left.image(data_url_bytes(record.image["thumbnail"]), caption=record.image["name"])
            elif record.image:
                left.caption(f"{record.image['name']} (no preview)")
            else:
                left.caption("no image")
            settings = record.settings
            right.caption(" · ".join(f"{k} {settings[k]}" for k in Params().request_fields()))
            right.markdown(metrics_table(record.outputs))
            for out in record.outputs:
                right.markdown(f"**{out.label} · {out.adapter_label}** ({out.status})")
                if out.error:
                    right.caption(f"error `{out.error['code']}`: {out.error['message']}")
                right.code(out.text or "(no text)", language=None, wrap_lines=True)


# ---- the page ----------------------------------------------------------------------------------------------------
settle_previous_run(st.session_state.history)
with st.sidebar:
    st.header("Worker")
    st.text_input("WebSocket URL", key="worker_url", help="default: INFERENCE_WS_URL")
    refresh = st.button("Refresh", key="refresh")
    status_slot = st.empty()
info = worker_info(refresh)
with status_slot.container():
    render_status(info)

limits: dict[str, Any] = dict(FALLBACK_LIMITS)
if info.status is not None:
    limits.update(info.status.limits)

st.title("Diagram playground")
st.caption("Upload a process diagram, stream what a model (and its LoRA adapters) makes of it, compare two adapters.")
if info.error is not None:
    show_notice(*explain(info.error, info.url))

left, right = st.columns([2, 3])
with left:
    uploaded = st.file_uploader("Diagram (PNG, JPEG or WebP)", type=["png", "jpg", "jpeg", "webp"], key="upload")
    st.button("Use a sample diagram", key="sample", on_click=use_sample)
    image = current_image(uploaded)
    if image is None:
        st.caption("No diagram yet: the prompt is sent alone.")
    elif image.mime is None:
        st.warning(f"{image.describe()}. This is not a PNG, JPEG or WebP file; the worker will refuse it.")
    else:
        st.image(image.data, caption=image.describe())
        if image.size > int(limits["image_max_bytes"]):
            st.warning(f"The image is larger than the worker's limit of {human_bytes(int(limits['image_max_bytes']))}.")
with right:
    st.text_area("Prompt", key="prompt", height=140)
    st.text_area("System prompt", key="system_prompt", height=80, help="leave empty for none")

params = parameter_controls(limits)

adapters = {a.name: a for a in info.adapters or []}
if info.status is not None:  # adapters in memory that the store does not list (loaded by path, say)
    for use in info.status.loaded_adapters:
        adapters.setdefault(use.name, AdapterItem(name=use.name, loaded=True, rank=use.rank,
                                                  target_modules=use.target_modules, digest=use.digest))
options = [BASE_MODEL, *sorted(adapters)]
model_name = info.status.model if info.status is not None else None


def facts(name: str) -> str:
    return adapter_facts(name, adapters, model_name)


mode = st.radio("Mode", [SINGLE, AB], key="mode", horizontal=True,
                help="A/B: two adapters (or an adapter and the base model) on the same image, prompt, parameters "
                     "and seed, streaming at the same time")
if mode == AB:
    pick_a, pick_b = st.columns(2)
    with pick_a:
        a_name = adapter_picker("A", "adapter_a", options, options[1] if len(options) > 1 else BASE_MODEL, facts)
    with pick_b:
        b_name = adapter_picker("B", "adapter_b", options, options[2] if len(options) > 2 else BASE_MODEL, facts)
    picks = [("A", a_name), ("B", b_name)]
else:
    picks = [("output", adapter_picker("Adapter", "adapter", options, BASE_MODEL, facts))]

go_col, stop_col, raw_col = st.columns([1, 1, 4])
go = go_col.button("Compare A/B" if mode == AB else "Generate", type="primary", key="generate")
stop_slot = stop_col.empty()
raw = raw_col.toggle("Raw text", key="raw", help="show the text as the model wrote it instead of rendering Markdown")

history: list[RunRecord] = st.session_state.history
prompt = st.session_state.prompt.strip()
if go and not prompt:
    st.warning("Write a prompt first.")
    go = False

if go:
    record = RunRecord(
        id=next_id(history), mode="ab" if mode == AB else "single", worker=st.session_state.worker_url,
        settings={"prompt": prompt, "system_prompt": st.session_state.system_prompt.strip() or None,
                  **params.request_fields()},
        outputs=[Output(label=label, adapter=None if name == BASE_MODEL else name) for label, name in picks],
        image=None if image is None else {
            "name": image.name, "mime": image.mime, "bytes": image.size, "width": image.width,
            "height": image.height, "sha256": image.sha256, "thumbnail": thumbnail_data_url(image.data)},
    )
    history.append(record)  # recorded before it starts: whatever happens to the run, it stays in the history
    try:
        columns = st.columns(len(record.outputs)) if record.mode == "ab" else [st.container()]
        views = []
        for i, (column, out) in enumerate(zip(columns, record.outputs)):
            with column:
                views.append(OutputView(i, out, record.mode == "ab"))
                views[-1].show(out, raw=raw)
        stop_slot.button("Stop", key="stop", help="cancel the generation (the text so far is kept)")
        messages = [user_message(prompt, image=image.data if image is not None else None)]
        run_live(record, views, messages, params, record.settings["system_prompt"], raw)
    finally:  # also when Streamlit stops this run (Stop): the next run waits for the record to be final
        for out in record.outputs:
            if not out.finished:
                out.status = "stopped"
                out.error = {"code": "interrupted", "message": "the run was interrupted before it finished",
                             "retryable": True}
        finish_record(record)
    stop_slot.empty()
    with status_slot.container():  # what the run changed: loaded adapters, their use
        render_status(worker_info(refresh=True))
    render_record(record, views, raw)
elif history:
    record = history[-1]
    st.caption(f"Last run: {record.id} · {record.started_at}")
    columns = st.columns(len(record.outputs)) if record.mode == "ab" else [st.container()]
    views = []
    for i, (column, out) in enumerate(zip(columns, record.outputs)):
        with column:
            views.append(OutputView(i, out, record.mode == "ab"))
    render_record(record, views, raw)

st.divider()
render_history(history, st.session_state.worker_url)
