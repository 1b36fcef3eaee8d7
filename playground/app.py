"""The playground: try adapters on a diagram, compare two, evaluate two over a set, keep a history.

    INFERENCE_WS_URL=ws://localhost:8765 inference-playground

(``inference-playground`` is ``streamlit run`` on this file, installed by ``pip install .``; from a checkout that is
not installed, ``python -m playground`` in its root does the same.)

This file is the page: the sidebar and the tabs, put together on every script run. Each tab renders in a module of
:mod:`playground.tabs` (what they share, the sidebar's parts included, in :mod:`playground.tabs.common`). Talking to
the worker is :mod:`playground.client`; running one or two streams is :mod:`playground.runs`; the set evaluation is
:mod:`playground.eval`, its scores :mod:`playground.scoring`, the history on disk :mod:`playground.store`; the A/B
comparison, the exports and images are pure modules beside it.

Three tabs share the sidebar (the worker, and the generation parameters): **Run** (one diagram, one output or A/B
side by side, the controls on the left and the stream on the right), **Evaluate a set** and **History**. The static
parts of every tab are drawn first; a run or an evaluation streams last, into placeholders of its tab.

Streaming happens inside the script run: ``asyncio.run`` streams every output concurrently and the callback updates
``st.empty()`` placeholders. Clicking Stop (or any other control) while it streams makes Streamlit stop that run
(``StopException`` at its next ``st`` call) and start the next run at once, in another thread (``runner.fastReruns``).
The stopped run cancels its generations on the worker and records them as stopped with their partial text; the next
run waits for that record to be final (:func:`playground.tabs.common.settle_previous_job`) before it renders.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from playground.runs import BASE_MODEL, explain
from playground.tabs.common import (
    EVAL_TAB,
    FALLBACK_LIMITS,
    HISTORY_TAB,
    RUN_TAB,
    adapter_facts,
    history_store,
    init_state,
    parameter_controls,
    render_status,
    settle_previous_job,
    show_notice,
    worker_info,
)
from playground.tabs.evaluate import eval_tab, run_evaluation_live
from playground.tabs.history import history_tab
from playground.tabs.run import run_tab
from wire.protocol import AdapterItem

# Streamlit's own running indicator has a Stop of its own, and the toolbar offers Deploy: neither belongs here.
PAGE_CSS = """<style>
[data-testid="stStatusWidget"], [data-testid="stAppDeployButton"], [data-testid="stMainMenu"] {display: none;}
.block-container {padding-top: 2.2rem;}
</style>"""

st.set_option("client.toolbarMode", "minimal")
st.set_page_config(page_title="Diagram playground", page_icon=":material/account_tree:", layout="wide")
st.html(PAGE_CSS)
init_state()

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
