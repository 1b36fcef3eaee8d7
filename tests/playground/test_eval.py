"""The set evaluation without the UI: inputs, the run on a real worker, resume, scores, exports, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest

from diagrams import Kind
from playground.client import WorkerClient, user_message
from playground.eval import (
    EvalItem,
    Evaluation,
    SetError,
    load,
    load_set,
    new_evaluation,
    run_evaluation,
    save_item,
    save_new,
    stored_image,
    summarize,
    to_jsonl,
    to_markdown,
)
from playground.history import Output
from playground.images import load_upload
from playground.runs import Params
from playground.scoring import chrf, row_scores
from playground.store import HistoryStore
from wire.prompts import DEFAULT_PROMPT
from wire.protocol import Done

from ..conftest import DIAGRAMS_DATA as DATA
from ..conftest import require
from .conftest import ROOT, diagram_set, png_bytes, reference_table

PARAMS = Params(temperature=0.0, max_tokens=24)


class Interrupt(BaseException):
    """Stands for Streamlit's StopException: raised from the UI callback when Stop is clicked."""


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_load_set_pairs_references_by_stem_and_says_what_it_left_out():
    """Images pair with the .md/.txt of their stem; junk, hidden files and orphan references are reported."""
    archive = zipped({"set/b.png": png_bytes(), "set/b.txt": b"ref b", "set/a.png": png_bytes((10, 10)),
                      "set/notes.docx": b"x", "__MACOSX/set/._a.png": b"x", "set/orphan.md": b"o",
                      "set/fake.png": b"not an image", "other/a.md": b"wrong folder"})
    loaded = load_set([("set.zip", archive), ("c.webp", b"RIFF\x00\x00\x00\x00WEBPjunk"), ("c.md", b"ref c")])
    assert [(i.name, i.reference) for i in loaded.items] == [("c.webp", "ref c"), ("set/a.png", None),
                                                             ("set/b.png", "ref b")]
    assert loaded.with_reference == 2
    assert sorted(loaded.problems) == [
        "other/a.md: a reference without a diagram of the same name",
        "set/fake.png: not a PNG, JPEG or WebP image; left out",
        "set/notes.docx: not a diagram (PNG, JPEG, WebP, or a source: BPMN (.bpmn), Mermaid (.mmd, .mermaid), "
        "Graphviz (.dot, .gv), PlantUML (.puml, .plantuml), SVG (.svg)) or a reference (.md, .txt)",
        "set/orphan.md: a reference without a diagram of the same name"]


def test_load_set_draws_diagram_sources_and_keeps_their_digest(renderer):
    """A zip of a BPMN file (with its reference), a Mermaid file and a broken one: the sources are drawn as PNG, the
    item keeps the source's digest, the broken one is left out with the kind and the reason."""
    require(renderer, Kind.BPMN, Kind.MERMAID)
    bpmn = (DATA / "order-process.bpmn").read_bytes()
    archive = zipped({"set/order.bpmn": bpmn, "set/order.md": b"| Step |",
                      "set/flow.mmd": (DATA / "flow.mmd").read_bytes(),
                      "set/broken.mmd": b"flowchart LR\n  A --> B\n  B -=> C\n"})
    loaded = load_set([("set.zip", archive)], load=lambda name, data: load_upload(name, data, renderer))
    assert [(i.name, i.reference) for i in loaded.items] == [("set/flow.mmd", None), ("set/order.bpmn", "| Step |")]
    order = loaded.items[1].image
    assert order.mime == "image/png" and order.data.startswith(b"\x89PNG")
    assert order.source is not None and order.source["sha256"] == hashlib.sha256(bpmn).hexdigest()
    assert order.source["kind"] == "bpmn" and order.source["renderer"] == "bpmn-js 18.31.1"
    assert len(loaded.problems) == 1
    assert loaded.problems[0].startswith("set/broken.mmd: Mermaid: syntax error: ")
    assert loaded.problems[0].endswith("(line 3); left out")
    evaluation = new_evaluation(loaded.items, worker="ws://x", prompt="p", system_prompt=None, params=Params(),
                                adapter_a=None, adapter_b=None)
    record = json.loads(to_jsonl(evaluation).splitlines()[2])
    assert record["image"]["source"]["sha256"] == hashlib.sha256(bpmn).hexdigest()
    assert record["image"]["sha256"] == hashlib.sha256(order.data).hexdigest()


def test_load_set_limits():
    """Too many diagrams, too many bytes, a file that is not a zip, an image over the worker's limit."""
    five = diagram_set(5)
    with pytest.raises(SetError, match=r"the set has 5 diagrams; at most 4 \(PLAYGROUND_EVAL_MAX_ITEMS\)"):
        load_set([("set.zip", five)], max_items=4)
    with pytest.raises(SetError, match="PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES"):
        load_set([("set.zip", five)], max_bytes=1000)
    with pytest.raises(SetError, match=r"broken\.zip is not a zip archive"):
        load_set([("broken.zip", b"PK nope")])
    loaded = load_set([("big.png", png_bytes((400, 400)))], image_max_bytes=100)
    assert loaded.items == [] and "over the worker's limit of 100 bytes" in loaded.problems[0]


async def solo(url: str, image: bytes, adapter: str | None, params: Params) -> Done:
    async with WorkerClient(url) as client:
        async for item in client.generate([user_message(DEFAULT_PROMPT, image=image)], adapter=adapter,
                                          **params.request_fields()):
            if isinstance(item, Done):
                return item
    raise AssertionError("no done")


def evaluation_of(loaded_items, params: Params = PARAMS, url: str = "ws://w") -> Evaluation:
    return new_evaluation(loaded_items, worker=url, prompt=DEFAULT_PROMPT, system_prompt=None, params=params,
                          adapter_a="demo-a", adapter_b=None)


async def test_every_item_runs_with_both_adapters_and_is_scored(worker):
    """Each item's A and B equal solo runs; scores are chrF and table rows of those outputs; digests recorded."""
    loaded = load_set([("set.zip", diagram_set(3))])
    evaluation = evaluation_of(loaded.items, url=worker.url)
    data = {i.name: i.image.data for i in loaded.items}
    saved: list[int] = []
    async with WorkerClient(worker.url) as client:
        await run_evaluation(client, evaluation, lambda item: data[item.name],
                             on_item=lambda item: saved.append(item.position))
    assert (evaluation.status, evaluation.items_done, saved) == ("done", 3, [0, 1, 2])
    assert evaluation.digests["A"] and evaluation.digests["B"] is None
    for item, source in zip(evaluation.items, loaded.items):
        a, b = item.outputs
        assert a.text == (await solo(worker.url, source.image.data, "demo-a", PARAMS)).content
        assert b.text == (await solo(worker.url, source.image.data, None, PARAMS)).content
        assert item.scores is not None and item.reference == reference_table(item.position + 1)
        assert item.scores["A"]["chrf"] == round(chrf(a.text, item.reference), 4)
        assert item.scores["B"]["rows"] == row_scores(b.text, item.reference).to_dict()  # type: ignore[union-attr]
        assert item.comparison is not None
    summary = summarize(evaluation)
    chrf_a = [i.scores["A"]["chrf"] for i in evaluation.items]  # type: ignore[index]
    assert summary["chrf"]["A"] == round(sum(chrf_a) / 3, 4)
    assert (summary["scored"], summary["with_reference"], summary["verdicts"]["unjudged"]) == (3, 3, 3)


async def test_a_stopped_evaluation_resumes_from_the_history(worker, tmp_path):
    """Stop during item 2: item 1 is kept, item 2 is redone on resume (from the stored images), 3–5 run then."""
    store = HistoryStore(tmp_path)
    loaded = load_set([("set.zip", diagram_set(5))])
    params = Params(temperature=0.0, max_tokens=512)  # item 2 is stopped at its first tokens, far from the end
    evaluation = evaluation_of(loaded.items, params, worker.url)
    save_new(store, evaluation, [i.image.data for i in loaded.items])
    data = {i.name: i.image.data for i in loaded.items}

    def stop_in_item_2(item: EvalItem, events) -> None:
        if item.position == 1 and any(e.kind == "token" for e in events):
            raise Interrupt

    async with WorkerClient(worker.url) as client:
        with pytest.raises(Interrupt):
            await run_evaluation(client, evaluation, lambda item: data[item.name], on_events=stop_in_item_2,
                                 on_item=lambda item: save_item(store, evaluation, item))
        assert (await client.status()).running == 0
    store.update_evaluation(evaluation.header(), "now")
    stopped = load(store, evaluation.id)  # type: ignore[arg-type]
    assert stopped is not None and stopped.status == "interrupted"
    assert [i.needs_run for i in stopped.items] == [False, True, True, True, True]
    assert stopped.items[1].outputs[0].status == "stopped"
    first = stopped.items[0].outputs[0].text
    async with WorkerClient(worker.url) as client:
        await run_evaluation(client, stopped, stored_image(store), on_item=lambda item: save_item(store, stopped, item))
    assert (stopped.status, stopped.items_done) == ("done", 5)
    assert stopped.items[0].outputs[0].text == first  # not run again
    second = loaded.items[1].image.data
    assert stopped.items[1].outputs[1].text == (await solo(worker.url, second, None, params)).content


def test_summary_and_exports_by_hand():
    """Means, wins, verdict counts and latency medians of a made-up evaluation; JSON Lines and Markdown carry them."""
    def done(label: str, adapter: str | None, ttft: float, queue: float) -> Output:
        return Output(label, adapter, text="| a |", status="done", finish_reason="stop",
                      timings={"queue_ms": queue, "ttft_ms": ttft, "total_ms": 100.0, "tokens_per_s": 50.0},
                      usage={"prompt_tokens": 1, "completion_tokens": 2, "max_tokens": 8})

    items = []
    for position, (ca, cb, verdict) in enumerate([(60.0, 40.0, "a"), (50.0, 50.0, "tie"), (30.0, 40.0, None)]):
        rows = {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "matched": 1, "rows": 1, "reference_rows": 2}
        items.append(EvalItem(position, f"d{position}.png", {"name": f"d{position}.png", "sha256": "f" * 64},
                              reference="r", reference_name=f"d{position}.md", reference_sha256="e" * 64,
                              outputs=[done("A", "demo-a", 20.0, 0.0), done("B", None, 30.0, 10.0 * position)],
                              scores={"A": {"chrf": ca, "rows": rows}, "B": {"chrf": cb, "rows": None}},
                              verdict=verdict))
    evaluation = Evaluation("ws://w", "Describe.", None, PARAMS, {"A": "demo-a", "B": None}, items, id=4,
                            created_at="2026-12-01T10:00:00Z", status="done", digests={"A": "d" * 64, "B": None})
    summary = summarize(evaluation, resamples=500)
    assert (summary["chrf"]["A"], summary["chrf"]["B"]) == (round(140 / 3, 4), round(130 / 3, 4))
    assert summary["chrf"]["a_minus_b"]["mean"] == round(10 / 3, 4)
    assert summary["chrf"]["wins"] == {"A": 1, "tie": 1, "B": 1}
    assert summary["rows"]["items"] == 0  # B has no table rows scored, so no pair to compare
    assert summary["verdicts"] == {"a": 1, "b": 0, "tie": 1, "both_wrong": 0, "unjudged": 1}
    assert summary["latency"]["B"] == {"queue_ms": 10.0, "first_token_ms": 20.0, "tokens_per_s": 50.0}
    lines = [json.loads(line) for line in to_jsonl(evaluation, summary).splitlines()]
    assert lines[0]["type"] == "evaluation" and lines[0]["adapters"]["A"] == {"name": "demo-a", "label": "demo-a",
                                                                            "digest": "d" * 64}
    assert lines[0]["params"] == PARAMS.request_fields() and lines[0]["summary"] == summary
    assert [(line["type"], line["image"]["sha256"], line["verdict"]) for line in lines[1:]] == [
        ("item", "f" * 64, "a"), ("item", "f" * 64, "tie"), ("item", "f" * 64, None)]
    md = to_markdown(evaluation, summary)
    assert md.startswith("# A/B evaluation 4: demo-a vs base model\n")
    assert "| chrF | 46.7 | 43.3 | +3.3 (" in md
    assert "A better 1 · B better 0 · tie 1 · both wrong 0 · not judged 1" in md
    assert "| 1 | d0.png | `ffffffffffff` | 60.0 | 40.0 | 0.667 | – | A better |" in md
    assert "| A | demo-a | dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd |" in md


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "playground.eval", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


def test_cli_evaluates_a_zip_and_writes_the_exports(worker, tmp_path, history_dir):
    """`python -m playground.eval set.zip --a demo-a`: every item done, JSONL and Markdown written, kept in history."""
    (tmp_path / "set.zip").write_bytes(diagram_set(5))
    result = cli(str(tmp_path / "set.zip"), "--a", "demo-a", "--url", worker.url, "--temperature", "0",
                 "--max-tokens", "16", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("evaluation 1: demo-a vs base model: 5 of 5 items done, 0 failed, 5 scored\n")
    assert [line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("[")] == [
        f"[{i}/5] set/diagram-{i}.png" for i in range(1, 6)]
    lines = [json.loads(line) for line in (tmp_path / "out" / "evaluation-1.jsonl").read_text().splitlines()]
    assert lines[0]["status"] == "done" and lines[0]["params"]["max_tokens"] == 16
    for line in lines[1:]:
        a, b = line["outputs"]
        assert line["scores"]["A"]["chrf"] == round(chrf(a["text"], line["reference"]), 4)
        assert line["scores"]["B"]["chrf"] == round(chrf(b["text"], line["reference"]), 4)
    assert (tmp_path / "out" / "evaluation-1.md").read_text().startswith("# A/B evaluation 1: demo-a vs base model")
    stored = load(HistoryStore(history_dir), 1)
    assert stored is not None and stored.status == "done" and stored.items_done == 5


def test_cli_worker_down_exits_75(down_url, tmp_path):
    """An unreachable worker: exit status 75 and one line naming the reason."""
    (tmp_path / "d.png").write_bytes(png_bytes())
    result = cli(str(tmp_path / "d.png"), "--url", down_url, "--no-history")
    assert result.returncode == 75 and result.stderr.startswith("error: unreachable: ")
    assert result.stderr.count("\n") == 1


def test_cli_needs_a_set(tmp_path):
    """Without inputs or --resume, usage exits 2; an empty set exits 2 with a reason."""
    assert cli().returncode == 2
