"""The Streamlit app (streamlit.testing AppTest) against a real worker serving the tiny demo model."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from streamlit.testing.v1 import AppTest

from inference_worker.embedded import EmbeddedWorker
from inference_worker.protocol import Done
from playground.client import WorkerClient, user_message
from playground.diff import compare
from playground.history import RunRecord, to_json, to_markdown

from ..conftest import worker_settings
from ..helpers import Client, image_b64, image_message
from .conftest import APP

MAX_NEW_TOKENS = 256  # not the worker's default: the controls must take the limit from the worker's status


@pytest.fixture(scope="module")
def app_worker(demo, adapter_root):
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_new_tokens=MAX_NEW_TOKENS,
                                        max_concurrent_generations=4)) as running:
        yield running


def open_app(url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("INFERENCE_WS_URL", url)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def app(app_worker, monkeypatch) -> AppTest:
    return open_app(app_worker.url, monkeypatch)


def history(at: AppTest) -> list[RunRecord]:
    return list(at.session_state["history"])


def page_text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def generate(at: AppTest) -> RunRecord:
    at.button(key="generate").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return history(at)[-1]


async def expected_text(url: str, record: RunRecord, image: bytes | None, adapter: str | None) -> Done:
    """The same request, sent by the client library on its own."""
    s = record.settings
    params = {k: s[k] for k in ("temperature", "top_k", "top_p", "max_tokens", "seed", "repetition_penalty")}
    async with WorkerClient(url) as client:
        async for item in client.generate([user_message(s["prompt"], image=image)], system_prompt=s["system_prompt"],
                                          adapter=adapter, **params):
            if isinstance(item, Done):
                return item
    raise AssertionError("no done")


def test_status_panel_and_controls_bounded_by_the_worker(app, demo):
    """The sidebar shows the worker's state; token limits come from its status; the picker lists its adapters."""
    assert [s.value for s in app.sidebar.success] == ["Ready"]
    sidebar = "\n".join(m.value for m in app.sidebar.markdown)
    assert f"**Model** `{demo.model_dir.name}` (qwen3_vl)" in sidebar
    assert "**Running** 0 of 4 · **queued** 0 of 32" in sidebar
    max_tokens = app.number_input(key="max_tokens")
    assert (max_tokens.min, max_tokens.max, max_tokens.value) == (1, MAX_NEW_TOKENS, MAX_NEW_TOKENS)  # 512 clamped
    assert (app.slider(key="temperature").min, app.slider(key="temperature").max) == (0.0, 5.0)
    assert (app.slider(key="top_p").min, app.slider(key="top_p").max) == (0.01, 1.0)
    assert app.selectbox(key="adapter").options == ["(base model)", "demo-a", "demo-b"]


def test_adapter_picker_shows_the_adapters_facts(app, demo):
    """Picking an adapter shows its facts from list_adapters; the base model says so."""
    assert any(c.value == f"The base model `{demo.model_dir.name}`, no adapter." for c in app.caption)
    app.selectbox(key="adapter").set_value("demo-b")
    app.run()
    facts = next(c.value for c in app.caption if c.value.startswith("rank 8"))
    assert "alpha 16 · targets k_proj, o_proj, q_proj, v_proj" in facts and "base `qwen3_vl:model`" in facts


def test_generate_with_an_uploaded_diagram(app, app_worker, png):
    """Upload, pick an adapter, generate: the page shows the text and metrics; the run is in the history."""
    app.file_uploader(key="upload").upload("diagram.png", png, "image/png")
    app.selectbox(key="adapter").set_value("demo-a")
    app.slider(key="temperature").set_value(0.0)
    app.number_input(key="max_tokens").set_value(16)
    record = generate(app)
    assert (record.id, record.mode, record.status) == (1, "single", "done")
    out = record.outputs[0]
    expected = asyncio.run(expected_text(app_worker.url, record, png, "demo-a"))
    assert out.text == expected.content and out.adapter == "demo-a"
    assert (out.finish_reason, out.usage) == (expected.finish_reason, expected.usage.model_dump())
    assert record.image is not None and record.image["sha256"] == hashlib.sha256(png).hexdigest()
    assert record.image["thumbnail"].startswith("data:image/png;base64,")
    text = page_text(app)
    assert "| output | " in text and f"| {out.usage['completion_tokens']} | {out.finish_reason} | demo-a |" in text
    assert any(c.value == f"done ({out.finish_reason})" for c in app.caption)


def test_ab_mode_streams_both_and_compares_them(app, app_worker):
    """A/B: both outputs use the same prompt, parameters and seed; the page compares them when both are done."""
    app.session_state["use_sample"] = True
    app.radio(key="mode").set_value("A/B")
    app.run()
    assert (app.selectbox(key="adapter_a").value, app.selectbox(key="adapter_b").value) == ("demo-a", "demo-b")
    app.selectbox(key="adapter_b").set_value("(base model)")
    app.slider(key="temperature").set_value(0.7)
    app.number_input(key="max_tokens").set_value(24)
    app.number_input(key="seed").set_value(1234)
    record = generate(app)
    a, b = record.outputs
    assert (record.mode, a.adapter, b.adapter, a.status, b.status) == ("ab", "demo-a", None, "done", "done")
    assert a.seed == b.seed == 1234  # the worker reports the seed it sampled with
    sample = app.session_state["sample_image"].data
    assert a.text == asyncio.run(expected_text(app_worker.url, record, sample, "demo-a")).content
    assert b.text == asyncio.run(expected_text(app_worker.url, record, sample, None)).content
    assert record.comparison == compare(a.text, b.text)
    assert "Comparison" in [s.value for s in app.subheader]
    assert app.get("html")[0].value.startswith('<div class="ab-diff"')
    text = page_text(app)
    assert "| A | " in text and "| B | " in text and "A (demo-a) and B (base model)" in text


def test_history_exports_every_run(app):
    """After a single and an A/B run, the history lists both, charts them and exports them as JSON and Markdown."""
    app.session_state["use_sample"] = True
    app.number_input(key="max_tokens").set_value(8)
    generate(app)
    app.radio(key="mode").set_value("A/B")
    app.run()
    generate(app)
    runs = history(app)
    assert [(r.id, r.mode, r.status) for r in runs] == [(1, "single", "done"), (2, "ab", "done")]
    assert [b.label for b in app.get("download_button")] == ["Export JSON", "Export Markdown"]
    assert len(app.get("vega_lite_chart")) == 2  # time to first token and tokens/s across runs
    assert [e.label.split(" · ")[:3] for e in app.expander] == [["Run 2", "A/B", "demo-a vs demo-b"],
                                                                ["Run 1", "single", "base model"]]
    document = json.loads(to_json(runs))
    assert [len(r["outputs"]) for r in document["runs"]] == [1, 2]
    assert document["runs"][1]["comparison"]["identical"] is (runs[1].outputs[0].text == runs[1].outputs[1].text)
    markdown = to_markdown(runs)
    assert "## Run 1 · single · done" in markdown and "## Run 2 · A/B comparison · done" in markdown


def test_rejected_image_is_explained_and_recorded(app):
    """Bytes that are not an image: a warning at upload, the worker's invalid_image explained, the run recorded."""
    app.file_uploader(key="upload").upload("broken.png", b"this is not a png", "image/png")
    app.run()
    assert any("This is not a PNG, JPEG or WebP file" in w.value for w in app.warning)
    record = generate(app)
    assert record.status == "error"
    assert record.outputs[0].error is not None and record.outputs[0].error["code"] == "invalid_image"
    assert any(e.value.startswith("The worker rejected the input (invalid_image)") for e in app.error)


def test_busy_worker_is_explained_and_recorded(demo, adapter_root, monkeypatch):
    """With the only slot taken and no queue, Generate says the worker is busy; the run is recorded as retryable."""
    settings = worker_settings(demo, adapter_root, max_concurrent_generations=1, max_queue_size=0)
    with EmbeddedWorker(settings) as small, Client(small.url) as holder:
        at = open_app(small.url, monkeypatch)
        at.number_input(key="max_tokens").set_value(8)
        holder.send({"type": "generate", "session_id": "hold", "max_tokens": 2048, "temperature": 0,
                     "messages": image_message(image_b64())})
        assert holder.recv()["type"] == "token"  # it holds the slot
        record = generate(at)
        holder.send({"type": "cancel", "session_id": "hold"})
        assert holder.collect("hold").terminal["finish_reason"] == "cancelled"
    assert record.outputs[0].error == {"code": "busy", "retryable": True,
                                       "message": record.outputs[0].error["message"]}
    assert any(w.value.startswith("The worker is busy (busy)") for w in at.warning)


def test_worker_down_is_explained_and_runs_are_still_recorded(down_url, monkeypatch):
    """No worker: a clear message in the sidebar and the page, fallback limits, and a failed run in the history."""
    at = open_app(down_url, monkeypatch)
    assert at.sidebar.error[0].value.startswith("The worker is down or unreachable: the worker at "
                                                f"{down_url} is not reachable: connection refused")
    assert any(e.value.startswith("The worker is down or unreachable") for e in at.main.error)
    assert at.number_input(key="max_tokens").max == 2048
    assert at.selectbox(key="adapter").options == ["(base model)"]
    record = generate(at)
    assert (record.status, record.outputs[0].error["code"]) == ("error", "unreachable")  # type: ignore[index]
