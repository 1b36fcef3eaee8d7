"""The Streamlit app (streamlit.testing AppTest) against a real worker serving the tiny demo model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from inference_worker.embedded import EmbeddedWorker
from playground import eval as evaluation_lib
from playground.client import WorkerClient, user_message
from playground.diff import compare
from playground.eval import load_set, summarize
from playground.history import RunRecord, chart_rows, to_json, to_markdown
from playground.runs import Params
from playground.scoring import chrf
from playground.store import HistoryStore
from wire.protocol import Done

from ..conftest import worker_settings
from ..helpers import Client, greedy
from .conftest import APP, diagram_set

MAX_NEW_TOKENS = 256  # not the worker's default: the controls must take the limit from the worker's status


@pytest.fixture(scope="module")
def app_worker(demo, adapter_root):
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_new_tokens=MAX_NEW_TOKENS,
                                        max_batch_rows=4)) as running:
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
    """Every run in the history on disk, oldest first."""
    return HistoryStore(Path(os.environ["PLAYGROUND_HISTORY_DIR"])).runs()


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
    app.file_uploader(key="upload-0").upload("diagram.png", png, "image/png")
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
    app.button(key="sample").click()
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
    assert any(m.value.startswith("**Comparison.** A (demo-a) and B (base model)") for m in app.markdown)
    assert any(h.value.startswith('<div class="ab-diff"') for h in app.get("html"))
    text = page_text(app)
    assert "| A | " in text and "| B | " in text and "A (demo-a) and B (base model)" in text
    assert "| queued | to first token (after the queue) |" in text, "queueing is shown apart from generation"


def test_history_exports_every_run(app):
    """After a single and an A/B run, the history lists both, charts them and exports them as JSON and Markdown."""
    app.button(key="sample").click()
    app.number_input(key="max_tokens").set_value(8)
    generate(app)
    app.radio(key="mode").set_value("A/B")
    app.run()
    generate(app)
    runs = history(app)
    assert [(r.id, r.mode, r.status) for r in runs] == [(1, "single", "done"), (2, "ab", "done")]
    assert [b.label for b in app.get("download_button")] == ["Export runs as JSON", "Export runs as Markdown"]
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
    app.file_uploader(key="upload-0").upload("broken.png", b"this is not a png", "image/png")
    app.run()
    assert any("This is not a PNG, JPEG or WebP file" in w.value for w in app.warning)
    record = generate(app)
    assert record.status == "error"
    assert record.outputs[0].error is not None and record.outputs[0].error["code"] == "invalid_image"
    assert any(e.value.startswith("The worker rejected the input (invalid_image)") for e in app.error)


def test_busy_worker_is_explained_and_recorded(demo, adapter_root, monkeypatch):
    """With the only slot taken and no queue, Generate says the worker is busy; the run is recorded as retryable."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=1, max_queue_size=0)
    with EmbeddedWorker(settings) as small, Client(small.url) as holder:
        at = open_app(small.url, monkeypatch)
        at.number_input(key="max_tokens").set_value(8)
        # A text prompt the demo model answers without an end token for all 2048 tokens: it holds the slot.
        holder.send({"type": "generate", "session_id": "hold", **greedy(max_tokens=2048)})
        assert holder.recv()["type"] == "token"  # it holds the slot
        record = generate(at)
        holder.send({"type": "cancel", "session_id": "hold"})
        assert holder.collect("hold").terminal["finish_reason"] == "cancelled"
    assert record.outputs[0].error == {"code": "busy", "retryable": True,
                                       "message": record.outputs[0].error["message"]}
    assert any(w.value.startswith("The worker is busy (busy)") for w in at.warning)


def test_worker_down_is_explained_once_and_runs_are_still_recorded(down_url, monkeypatch):
    """No worker: one message on the page (a short line in the sidebar), fallback limits, a failed run recorded
    without an empty output box."""
    at = open_app(down_url, monkeypatch)
    assert [e.value for e in at.sidebar.error] == ["Unreachable"]
    assert at.main.error[0].value.startswith("The worker is down or unreachable: the worker at "
                                             f"{down_url} is not reachable: connection refused")
    assert at.number_input(key="max_tokens").max == 2048
    assert at.selectbox(key="adapter").options == ["(base model)"]
    record = generate(at)
    assert (record.status, record.outputs[0].error["code"]) == ("error", "unreachable")  # type: ignore[index]
    assert sum("The worker is down or unreachable" in e.value for e in at.error) == 1
    assert "(no text)" not in page_text(at) and "failed: unreachable" in page_text(at)



def test_uploader_limit_comes_from_the_worker(demo, adapter_root, monkeypatch):
    """The diagram uploader allows what the worker's IMAGE_MAX_BYTES allows (in Streamlit's whole megabytes)."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, image_max_bytes=3_500_000)) as small:
        at = open_app(small.url, monkeypatch)
        uploader = at.file_uploader(key="upload-0")
        assert uploader.proto.max_upload_size_mb == 3
        assert uploader.proto.label == ("Diagram (PNG, JPEG or WebP, at most 3.3 MiB; or a BPMN, Mermaid, Graphviz, "
                                        "PlantUML or SVG source)")


def test_sample_replaces_an_uploaded_diagram(app, png):
    """'Use a sample diagram' with a file uploaded: the sample is used and the uploader is emptied."""
    app.file_uploader(key="upload-0").upload("diagram.png", png, "image/png")
    app.run()
    assert any(c.value.startswith("diagram.png: PNG") for c in app.caption)
    app.button(key="sample").click()
    app.run()
    assert app.file_uploader(key="upload-1").value is None
    assert any(c.value.startswith("sample-order-process.png: PNG") for c in app.caption)
    app.button(key="clear_image").click()
    app.run()
    assert any(c.value == "No diagram yet: the prompt is sent alone." for c in app.caption)


def test_history_charts_tell_ab_runs_apart_with_upright_labels(app):
    """Both charts: run numbers not rotated, titles above the chart (not a cut axis title), a shape per run kind."""
    app.button(key="sample").click()
    app.number_input(key="max_tokens").set_value(4)
    generate(app)
    app.radio(key="mode").set_value("A/B")
    app.run()
    generate(app)
    for chart in app.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        encoding = spec["encoding"]
        assert encoding["x"]["axis"]["labelAngle"] == 0 and encoding["y"]["title"] is None
        assert encoding["shape"]["field"] == "kind" and spec["title"]
        assert encoding["shape"]["scale"]["domain"] == ["single run", "A/B run"]
    assert [r["mode"] for r in chart_rows(history(app))] == ["single", "ab", "ab"]


def run_set(at: AppTest, n: int = 5) -> int:
    at.slider(key="temperature").set_value(0.0)
    at.number_input(key="max_tokens").set_value(12)
    at.file_uploader(key="eval_upload-0").upload("set.zip", diagram_set(n), "application/zip")
    at.run()
    assert any(c.value == f"{n} diagrams, {n} with a reference" for c in at.caption)
    at.button(key="eval_run").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return int(at.session_state["eval_id"])


def test_set_evaluation_end_to_end(app, history_dir):
    """A zip of 5 diagrams with references: every item runs A and B, is scored, can be judged and is exported."""
    eval_id = run_set(app)
    progress = [p.proto.text for p in app.get("progress")]
    assert "5 of 5 items done · done" in progress
    stored = evaluation_lib.load(HistoryStore(history_dir), eval_id)
    assert stored is not None and stored.status == "done" and stored.items_done == 5
    assert stored.adapters == {"A": "demo-a", "B": None} and stored.digests["A"]
    for item in stored.items:
        a, b = item.outputs
        assert (a.status, b.status) == ("done", "done")
        assert item.scores["A"]["chrf"] == round(chrf(a.text, item.reference), 4)  # type: ignore[index,arg-type]
        assert item.scores["B"]["chrf"] == round(chrf(b.text, item.reference), 4)  # type: ignore[index,arg-type]
    assert [m.label for m in app.metric] == ["chrF A", "chrF B", "chrF A − B", "rows F1 A", "rows F1 B",
                                             "rows F1 A − B"]
    summary = summarize(stored)
    assert app.metric[0].value == f"{summary['chrf']['A']:.1f}"
    app.button(key="verdict-a").click()
    app.run()
    app.button(key="verdict-tie").click()
    app.run()
    judged = evaluation_lib.load(HistoryStore(history_dir), eval_id)
    assert judged is not None and [i.verdict for i in judged.items] == ["a", "tie", None, None, None]
    assert app.session_state["eval_item"] == 2  # on to the next item without a verdict
    exports = {b.label: b for b in app.get("download_button")}
    assert set(exports) >= {"Export JSON Lines", "Export Markdown"}
    lines = [json.loads(line) for line in evaluation_lib.to_jsonl(judged).splitlines()]
    assert lines[0]["summary"]["verdicts"]["a"] == 1 and lines[1]["verdict"] == "a"
    assert len(app.get("vega_lite_chart")) == 3  # per-item differences, wins/ties/losses, latency


class Interrupt(BaseException):
    """Stands for Streamlit's StopException."""


def test_an_interrupted_evaluation_resumes_from_the_history_after_a_restart(app_worker, history_dir, monkeypatch):
    """An evaluation stopped in item 3 (in another playground) is opened from the History tab and resumed."""
    store = HistoryStore(history_dir)
    loaded = load_set([("set.zip", diagram_set(5))])
    found = evaluation_lib.new_evaluation(loaded.items, worker=app_worker.url, prompt="Describe.", system_prompt=None,
                                          params=Params(temperature=0.0, max_tokens=512), adapter_a="demo-a",
                                          adapter_b="demo-b")
    evaluation_lib.save_new(store, found, [i.image.data for i in loaded.items])

    def stop_in_item_3(item, events) -> None:
        if item.position == 2 and any(e.kind == "token" for e in events):
            raise Interrupt

    async def interrupted() -> None:
        async with WorkerClient(app_worker.url) as client:
            await evaluation_lib.run_evaluation(client, found, evaluation_lib.stored_image(store),
                                                on_events=stop_in_item_3,
                                                on_item=lambda item: evaluation_lib.save_item(store, found, item))

    with pytest.raises(Interrupt):
        asyncio.run(interrupted())
    evaluation_lib.save_header(store, found)
    at = open_app(app_worker.url, monkeypatch)
    at.button(key=f"open-eval-{found.id}").click()
    at.run()
    assert "2 of 5 items done · interrupted" in [p.proto.text for p in at.get("progress")]
    at.button(key="eval_resume").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    resumed = evaluation_lib.load(store, found.id)  # type: ignore[arg-type]
    assert resumed is not None and (resumed.status, resumed.items_done) == ("done", 5)
    assert resumed.items[0].outputs[0].text == found.items[0].outputs[0].text


def test_history_survives_a_restart_and_a_run_repeats_with_its_seed(app_worker, monkeypatch):
    """A sampled A/B run, then a new playground on the same history: it lists the run, reopens and repeats it."""
    first = open_app(app_worker.url, monkeypatch)
    first.button(key="sample").click()
    first.radio(key="mode").set_value("A/B")
    first.run()
    first.slider(key="temperature").set_value(0.9)
    first.number_input(key="seed").set_value(777)
    first.number_input(key="max_tokens").set_value(16)
    original = generate(first)
    first.segmented_control(key=f"run-verdict-{original.id}").set_value("b")
    first.run()
    restarted = open_app(app_worker.url, monkeypatch)  # a new session: nothing in memory
    assert restarted.session_state["last_run"] is None
    assert [e.label.split(" · ")[:4] for e in restarted.expander] == [
        ["Run 1", "A/B", "demo-a vs demo-b", "sample-order-process.png"]]
    restarted.button(key="open-run-1").click()
    restarted.run()
    assert restarted.session_state["last_run"].outputs[0].text == original.outputs[0].text
    restarted.button(key="repeat-run-1").click()
    restarted.run()
    repeated = history(restarted)[-1]
    assert (repeated.id, repeated.mode, repeated.settings) == (2, "ab", original.settings)
    assert [o.text for o in repeated.outputs] == [o.text for o in original.outputs]
    assert [o.seed for o in repeated.outputs] == [777, 777]
    assert history(restarted)[0].verdict == "b"
    restarted.selectbox(key="hist_adapter").set_value("demo-b")
    restarted.run()
    assert len(restarted.expander) == 2
