"""What every tab of the playground shares: the session's state, the history store, the worker (its status in the
sidebar), the sidebar's parameters, the adapter pickers and the uploads (a diagram source is drawn once per content).

The settings and the worker's token are read from the environment when they are needed, as the page reads them on
every script run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import streamlit as st

from diagrams import SUFFIXES as DIAGRAM_SUFFIXES
from playground.client import DEFAULT_URL, ClientCode
from playground.images import ImageInput, UploadError, human_bytes, is_diagram_source, load_image, load_upload
from playground.runs import (
    BASE_MODEL,
    Params,
    WorkerInfo,
    explain,
    fetch_worker_info,
)
from playground.settings import PlaygroundSettings
from playground.store import HistoryStore, StoreError
from wire.errors import ErrorCode
from wire.limits import DEFAULT_MAX_TOKENS, IMAGE_MAX_BYTES, MAX_NEW_TOKENS, sampling_ranges
from wire.prompts import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT
from wire.protocol import AdapterItem, Status

# When the worker cannot be asked, the controls use the worker's defaults.
_RANGES = sampling_ranges()
FALLBACK_LIMITS: dict[str, Any] = {"max_new_tokens": MAX_NEW_TOKENS, "default_max_tokens": DEFAULT_MAX_TOKENS,
                                   "temperature": _RANGES["temperature"], "top_p": _RANGES["top_p"],
                                   "repetition_penalty": _RANGES["repetition_penalty"],
                                   "image_max_bytes": IMAGE_MAX_BYTES}
STATUS_TIMEOUT_S = 3.0  # every page run asks for the status: an unreachable host must not hold the page long
MAX_SEED = 2**53 - 1  # the largest integer a browser number input holds exactly
SINGLE, AB = "Single", "A/B"
RUN_TAB, EVAL_TAB, HISTORY_TAB = "Run", "Evaluate a set", "History"
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]
SOURCE_TYPES = [suffix.removeprefix(".") for suffix in DIAGRAM_SUFFIXES]


def settings() -> PlaygroundSettings:
    """The playground's settings (the history's directory, the set evaluation's limits), from the environment."""
    return PlaygroundSettings()


def token() -> str | None:
    """The worker's shared secret, when it has one (INFERENCE_AUTH_TOKEN); never shown in the page."""
    return os.environ.get("INFERENCE_AUTH_TOKEN") or None


# ---- state, set once per session ---------------------------------------------------------------------------------
def init_state() -> None:
    """The session's state, on its first script run (every later run keeps what the session changed)."""
    defaults: dict[str, Any] = {
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
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


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
        return open_store(str(settings().history_dir)), None
    except StoreError as exc:
        return None, f"The history is not saved: {exc}. Set PLAYGROUND_HISTORY_DIR to a writable directory."


# ---- worker ------------------------------------------------------------------------------------------------------
def worker_info(refresh: bool) -> WorkerInfo:
    """The worker's status (every run: it is cheap) and its adapters (once per URL, on Refresh, after a run)."""
    url = st.session_state.worker_url
    cached = st.session_state.adapters
    want_adapters = refresh or cached is None or cached[0] != url
    info = run_async(fetch_worker_info(url, with_adapters=want_adapters, token=token(), timeout_s=STATUS_TIMEOUT_S))
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
