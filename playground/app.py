"""The playground: try adapters on a diagram, compare two, evaluate two over a set, keep a history.

    INFERENCE_WS_URL=ws://localhost:8765 inference-playground

(``inference-playground`` is ``streamlit run`` on this file, installed by ``pip install .``; from a checkout that is
not installed, ``python -m playground`` in its root does the same.)

This file renders. Talking to the worker is :mod:`playground.client`; running one or two streams is
:mod:`playground.runs`; the set evaluation is :mod:`playground.eval`, its scores :mod:`playground.scoring`, the
history on disk :mod:`playground.store`; the A/B comparison, the exports and images are pure modules beside it.

Three tabs share the sidebar (the worker, and the generation parameters): **Run** (one diagram, one output or A/B
side by side, the controls on the left and the stream on the right), **Evaluate a set** and **History**. The static
parts of every tab are drawn first; a run or an evaluation streams last, into placeholders of its tab.

Streaming happens inside the script run: ``asyncio.run`` streams every output concurrently and the callback updates
``st.empty()`` placeholders. Clicking Stop (or any other control) while it streams makes Streamlit stop that run
(``StopException`` at its next ``st`` call) and start the next run at once, in another thread (``runner.fastReruns``).
The stopped run cancels its generations on the worker and records them as stopped with their partial text; the next
run waits for that record to be final (:func:`settle_previous_job`) before it renders.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from diagrams import SUFFIXES as DIAGRAM_SUFFIXES
from diagrams import default_renderer
from playground import eval as evaluation_lib
from playground.client import DEFAULT_URL, ClientCode, WorkerClient, describe_progress, user_message
from playground.diff import describe_divergence, diff_html, first_divergence, inert_markdown, word_diff
from playground.eval import EvalItem, Evaluation, SetError, item_row, load_set, new_evaluation, summarize
from playground.history import VERDICTS, Output, RunRecord, chart_rows, code_span, first_token_ms, to_json, to_markdown
from playground.images import (
    ImageInput,
    UploadError,
    data_url_bytes,
    human_bytes,
    is_diagram_source,
    load_image,
    load_upload,
    sample_diagram,
)
from playground.runs import (
    BASE_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    Event,
    Params,
    WorkerInfo,
    explain,
    fetch_worker_info,
    finish_record,
    run_outputs,
)
from playground.settings import PlaygroundSettings
from playground.store import HistoryStore, StoreError
from wire.errors import ErrorCode
from wire.limits import DEFAULT_MAX_TOKENS, IMAGE_MAX_BYTES, MAX_NEW_TOKENS, sampling_ranges
from wire.protocol import AdapterItem, AdapterProgress, Status

# When the worker cannot be asked, the controls use the worker's defaults.
_RANGES = sampling_ranges()
FALLBACK_LIMITS: dict[str, Any] = {"max_new_tokens": MAX_NEW_TOKENS, "default_max_tokens": DEFAULT_MAX_TOKENS,
                                   "temperature": _RANGES["temperature"], "top_p": _RANGES["top_p"],
                                   "repetition_penalty": _RANGES["repetition_penalty"],
                                   "image_max_bytes": IMAGE_MAX_BYTES}
STATUS_TIMEOUT_S = 3.0  # every page run asks for the status: an unreachable host must not hold the page long
STATUS_EVERY_S = 1.0  # while a run streams, the sidebar's status is refreshed this often
MAX_SEED = 2**53 - 1  # the largest integer a browser number input holds exactly
SINGLE, AB = "Single", "A/B"
RUN_TAB, EVAL_TAB, HISTORY_TAB = "Run", "Evaluate a set", "History"
LANE_HEIGHT = 420
HISTORY_PAGE = 50
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]
SOURCE_TYPES = [suffix.removeprefix(".") for suffix in DIAGRAM_SUFFIXES]
# Streamlit's own running indicator has a Stop of its own, and the toolbar offers Deploy: neither belongs here.
PAGE_CSS = """<style>
[data-testid="stStatusWidget"], [data-testid="stAppDeployButton"], [data-testid="stMainMenu"] {display: none;}
.block-container {padding-top: 2.2rem;}
</style>"""

st.set_option("client.toolbarMode", "minimal")
st.set_page_config(page_title="Diagram playground", page_icon=":material/account_tree:", layout="wide")
st.html(PAGE_CSS)
SETTINGS = PlaygroundSettings()
# The worker's shared secret, when it has one (INFERENCE_AUTH_TOKEN); never shown in the page.
TOKEN = os.environ.get("INFERENCE_AUTH_TOKEN") or None

# ---- state, set once per session ---------------------------------------------------------------------------------
_DEFAULTS: dict[str, Any] = {
    "worker_url": os.environ.get("INFERENCE_WS_URL", DEFAULT_URL),
    "adapters": None,  # (url, list[AdapterItem]) from the last list_adapters that worked
    "prompt": DEFAULT_PROMPT, "system_prompt": DEFAULT_SYSTEM_PROMPT,
    "eval_prompt": DEFAULT_PROMPT, "eval_system_prompt": DEFAULT_SYSTEM_PROMPT,
    "image_source": None,  # an ImageInput picked without the uploader: the sample, or a stored run's image
    "upload_gen": 0, "eval_upload_gen": 0,  # bumped to empty an uploader
    "last_run": None,  # RunRecord shown in the Run tab
    "eval_id": None,  # the evaluation shown in the Evaluate tab
    "eval_item": 0,  # the item under review
    "job": None,  # "run" / "evaluation" while one streams (a stopped one is still saving)
    **Params().request_fields(),
}
for _key, _value in _DEFAULTS.items():
    if _key not in st.session_state:
        st.session_state[_key] = _value


def settle_previous_job(timeout_s: float = 8.0) -> None:
    """Wait for a run or evaluation that Streamlit is stopping in another thread to save its outcome."""
    if st.session_state.job is None:
        return
    deadline = time.monotonic() + timeout_s
    with st.spinner("Stopping…"):
        while st.session_state.job is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    st.session_state.job = None


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion in this script run (each script run gets its own event loop)."""
    return asyncio.run(coro)


@st.cache_resource(show_spinner=False)
def open_store(directory: str) -> HistoryStore:
    return HistoryStore(Path(directory))


def history_store() -> tuple[HistoryStore | None, str | None]:
    try:
        return open_store(str(SETTINGS.history_dir)), None
    except StoreError as exc:
        return None, f"The history is not saved: {exc}. Set PLAYGROUND_HISTORY_DIR to a writable directory."


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


_SHORT: dict[str, str] = {
    ClientCode.UNREACHABLE: "Unreachable", ClientCode.TIMEOUT: "Not answering", ClientCode.LOADING: "Loading its model",
    ClientCode.UNAUTHORIZED: "Refused the token", ClientCode.BAD_URL: "Not a WebSocket URL",
    ErrorCode.SHUTTING_DOWN: "Shutting down",
}


def render_status(info: WorkerInfo) -> None:
    """The sidebar's worker panel. When the worker cannot be asked, one short line: the page says the rest."""
    if info.error is not None:
        st.error(_SHORT.get(info.error.code, f"Unavailable ({info.error.code})"), icon=":material/error:")
        return
    assert info.status is not None
    render_worker_status(info.status)
    if info.adapters_error is not None:
        show_notice(*explain(info.adapters_error, info.url))


def render_worker_status(status: Status) -> None:
    if status.ready:
        st.success("Ready", icon=":material/check_circle:")
    else:
        st.warning("Not ready")
    st.markdown(
        f"**Model** `{status.model}` ({status.model_type})  \n"
        f"**Device** {status.device} · {status.dtype} · {'vision' if status.vision else 'text only'}  \n"
        f"**Running** {status.running} of {status.max_running} · **queued** {status.queued} of {status.max_queue}  \n"
        f"**Connections** {status.connections}"
    )
    loaded = ", ".join(f"`{a.name}`{' (default)' if a.default else ''}" for a in status.loaded_adapters)
    st.caption(f"Loaded adapters ({len(status.loaded_adapters)} of {status.max_loaded_adapters}): "
               f"{loaded or 'none, the base model only'}")


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
    """The sample replaces whatever was uploaded (the uploader is emptied), so the click always does something."""
    if "sample_image" not in st.session_state:
        st.session_state.sample_image = sample_diagram()
    st.session_state.image_source = st.session_state.sample_image
    st.session_state.upload_gen += 1


def clear_image() -> None:
    st.session_state.image_source = None
    st.session_state.upload_gen += 1


@st.cache_data(show_spinner="Drawing the diagram…", max_entries=256)
def drawn(name: str, data: bytes) -> ImageInput | UploadError:
    """A diagram source drawn once per content (Streamlit reruns the page on every click). A render that ran out of
    time is not kept: it may work next time."""
    try:
        return load_upload(name, data)
    except UploadError as exc:
        if exc.code == ClientCode.TIMEOUT:
            raise
        return exc


def upload(name: str, data: bytes) -> ImageInput:
    """A picture as it is, a diagram source drawn as PNG (:class:`UploadError` when it cannot be drawn)."""
    if not is_diagram_source(name):
        return load_image(name, data)
    found = drawn(name, data)
    if isinstance(found, UploadError):
        raise found
    return found


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
    st.slider("Temperature", min_value=float(t_low), max_value=float(t_high), step=0.05, key="temperature",
              help="0 is greedy: deterministic, the seed does not matter")
    c1, c2 = st.columns(2)
    c1.slider("top_p", min_value=0.01, max_value=p_high, step=0.01, key="top_p")
    c2.number_input("top_k", min_value=0, step=1, key="top_k", help="0 disables top-k")
    c1.number_input("Max tokens", min_value=1, max_value=max_new, step=16, key="max_tokens",
                    help=f"the worker allows at most {max_new}")
    c2.number_input("Seed", min_value=0, max_value=MAX_SEED, step=1, key="seed",
                    help="the same seed reproduces a sampled run (both sides of an A/B run use it)")
    st.number_input("Repetition penalty", min_value=0.01, max_value=r_high, step=0.05, format="%.2f",
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


def adapter_of(pick: str) -> str | None:
    return None if pick == BASE_MODEL else pick


def pick_of(adapter: str | None) -> str:
    return BASE_MODEL if adapter is None else adapter


# ---- outputs -----------------------------------------------------------------------------------------------------
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


# ---- the run tab -------------------------------------------------------------------------------------------------
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
        async with WorkerClient(record.worker, token=TOKEN) as client:
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


# ---- the evaluation tab ------------------------------------------------------------------------------------------
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
    left, right = st.columns([2, 3], gap="large")
    todo = None
    with left:
        st.markdown("**New evaluation**")
        files = st.file_uploader(
            "Diagrams, with references (a .md or .txt of the same name), or a zip of both",
            type=[*IMAGE_TYPES, *SOURCE_TYPES, "zip", "md", "txt"], accept_multiple_files=True,
            key=f"eval_upload-{st.session_state.eval_upload_gen}",
            max_upload_size=max(1, SETTINGS.eval_max_archive_bytes // 1_000_000))
        loaded = None
        if files:
            try:
                loaded = load_set([(f.name, f.getvalue()) for f in files], max_items=SETTINGS.eval_max_items,
                                  max_bytes=SETTINGS.eval_max_archive_bytes,
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
        async with WorkerClient(found.worker, token=TOKEN) as client:
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


# ---- the history tab ---------------------------------------------------------------------------------------------
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


# ---- the page ----------------------------------------------------------------------------------------------------
settle_previous_job()
store, store_problem = history_store()
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
with st.sidebar:
    st.header("Parameters")
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


st.markdown("### Diagram playground")
shown: set[str] = set()  # notices already on the page (each is shown once)
if info.error is not None:
    level, text = explain(info.error, info.url)
    show_notice(level, text)
    shown.add(text)
if store_problem is not None:
    st.warning(store_problem)
# Switching tabs happens in the browser only: a rerun would stop whatever streams.
run_container, eval_container, history_container = st.tabs([RUN_TAB, EVAL_TAB, HISTORY_TAB])
with eval_container:
    evaluation_job = eval_tab(limits, params, options, facts, store)
with run_container:
    run_tab(info, limits, params, options, facts, store, status_slot, shown)
if evaluation_job is not None and store is not None:
    job_evaluation, job_stop_slot, job_header, job_container = evaluation_job
    with job_container:
        run_evaluation_live(job_evaluation, store, job_stop_slot, job_header, status_slot)
with history_container:  # last: it lists what this script run added
    history_tab(store, st.session_state.worker_url)
