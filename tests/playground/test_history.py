"""The session history: record status, chart rows, JSON and Markdown exports."""

from __future__ import annotations

import json

from playground.diff import compare
from playground.history import Output, RunRecord, chart_rows, code_span, next_id, to_json, to_markdown

SETTINGS = {"prompt": "Describe | the diagram.", "system_prompt": None, "temperature": 0.3, "top_k": 50,
            "top_p": 0.9, "max_tokens": 12, "seed": 42, "repetition_penalty": 1.05}
TIMINGS = {"queue_ms": 1.0, "ttft_ms": 12.5, "total_ms": 130.0, "tokens_per_s": 100.0}
USAGE = {"prompt_tokens": 300, "completion_tokens": 12, "max_tokens": 12}
IMAGE = {"name": "d.png", "mime": "image/png", "bytes": 781, "width": 320, "height": 240, "sha256": "ab" * 32,
         "thumbnail": "data:image/png;base64,AAAA"}


def done(label: str, adapter: str | None, text: str) -> Output:
    return Output(label=label, adapter=adapter, text=text, status="done", finish_reason="length", usage=USAGE,
                  timings=TIMINGS, seed=42)


def single(run_id: int = 1) -> RunRecord:
    return RunRecord(id=run_id, mode="single", worker="ws://w", settings=SETTINGS, image=IMAGE,
                     outputs=[done("output", "demo-a", "a b c d")], started_at="2026-11-22T17:00:00Z")


def ab(run_id: int = 2) -> RunRecord:
    a, b = done("A", "demo-a", "a b c d"), done("B", None, "a x c d e")
    return RunRecord(id=run_id, mode="ab", worker="ws://w", settings=SETTINGS, image=None, outputs=[a, b],
                     comparison=compare(a.text, b.text), started_at="2026-11-22T17:01:00Z")


def failed(run_id: int = 3) -> RunRecord:
    out = Output(label="output", adapter=None, status="error",
                 error={"code": "busy", "message": "the worker is at capacity", "retryable": True})
    return RunRecord(id=run_id, mode="single", worker="ws://w", settings=SETTINGS, outputs=[out],
                     started_at="2026-11-22T17:02:00Z")


def test_record_status_and_next_id():
    """A run is done only when every output is; an error outranks a stop; ids count up from the last."""
    record = ab()
    assert record.status == "done"
    record.outputs[1].status = "stopped"
    assert record.status == "stopped"
    record.outputs[0].status = "error"
    assert record.status == "error"
    assert next_id([]) == 1 and next_id([single(1), ab(7)]) == 8


def test_has_text():
    """Done outputs and stopped ones with text are comparable; failed or empty stopped ones are not."""
    assert done("A", None, "").has_text
    assert Output("A", None, text="x", status="stopped").has_text
    assert not Output("A", None, text="", status="stopped").has_text
    assert not Output("A", None, text="x", status="error").has_text


def test_chart_rows_skip_outputs_without_timings():
    """One row per output with a time to first token (the worker's, and after the queue); failed runs add none."""
    timing = {"queue_ms": 1.0, "ttft_ms": 12.5, "first_token_ms": 11.5, "tokens_per_s": 100.0}
    assert chart_rows([single(), ab(), failed()]) == [
        {"run": 1, "mode": "single", "lane": "output", "adapter": "demo-a", **timing},
        {"run": 2, "mode": "ab", "lane": "A", "adapter": "demo-a", **timing},
        {"run": 2, "mode": "ab", "lane": "B", "adapter": "base model", **timing},
    ]


def test_records_round_trip_through_their_dict():
    """from_dict(to_dict()) gives the record back (the history on disk keeps records this way)."""
    for record in (single(), ab(), failed()):
        record.verdict = "tie"
        assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_json_export_keeps_everything():
    """The JSON export has every run with its image, settings, outputs (errors included) and comparison."""
    document = json.loads(to_json([single(), ab(), failed()], worker="ws://w", exported_at="T"))
    assert (document["version"], document["exported_at"], document["worker"]) == (1, "T", "ws://w")
    runs = document["runs"]
    assert [(r["id"], r["status"]) for r in runs] == [(1, "done"), (2, "done"), (3, "error")]
    assert runs[0]["image"] == IMAGE and runs[0]["settings"] == SETTINGS
    assert runs[0]["outputs"][0] == {
        "label": "output", "adapter": "demo-a", "text": "a b c d", "status": "done", "finish_reason": "length",
        "usage": USAGE, "timings": TIMINGS, "seed": 42, "error": None, "adapter_load": None, "elapsed_ms": None}
    assert runs[1]["comparison"]["divergence"]["word"] == 1
    assert runs[2]["outputs"][0]["error"] == {"code": "busy", "message": "the worker is at capacity",
                                              "retryable": True}


def test_markdown_export():
    """The Markdown export has per run its thumbnail, settings, a metrics table, the texts and the comparison."""
    md = to_markdown([single(), ab(), failed()], worker="ws://w", exported_at="T")
    assert md.startswith("# Playground history\n\nExported T from `ws://w` · 3 runs\n")
    assert "## Run 1 · single · done" in md and "## Run 2 · A/B comparison · done" in md
    assert "![d.png](data:image/png;base64,AAAA)" in md
    assert "| 0.3 | 50 | 0.9 | 12 | 42 | 1.05 |" in md
    assert "> Describe | the diagram." in md
    assert "| output | demo-a | done | length | 12.5 | 100.0 | 12 | 130.0 |" in md
    assert "| B | base model | done | length | 12.5 | 100.0 | 12 | 130.0 |" in md
    assert "```text\na x c d e\n```" in md
    assert "A and B agree on the first 2 characters (1 word) and first diverge at word 2." in md
    assert "- replace: `b` → `x`" in md and "- insert: (nothing) → `e`" in md
    assert "## Run 3 · single · error" in md
    assert "Error `busy` (retryable): the worker is at capacity" in md


def test_markdown_fences_and_cells_survive_model_text():
    """Backticks in an output get a longer fence; pipes in table cells are escaped."""
    record = single()
    record.outputs[0].text = "before ``` inside ```` after"
    record.outputs[0].adapter = "a|b"
    md = to_markdown([record])
    assert "`````text\nbefore ``` inside ```` after\n`````" in md
    assert "| output | a\\|b | done |" in md


def test_code_span_shows_any_text():
    """Inline code spans survive backticks in model text; an empty span reads (nothing)."""
    assert code_span("a b") == "`a b`"
    assert code_span("a`b") == "``a`b``"
    assert code_span("`x") == "`` `x ``"
    assert code_span("line\nbreak") == "`line break`"
    assert code_span("") == "(nothing)"
