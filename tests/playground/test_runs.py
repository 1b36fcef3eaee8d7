"""One playground run without the UI: concurrent outputs, interruption (Stop), failures, messages for people."""

from __future__ import annotations

import pytest

from playground.client import WorkerClient, WorkerUnavailable, user_message
from playground.history import Output, RunRecord
from playground.runs import Event, Params, explain, finish_record, run_outputs
from wire.protocol import Done

PROMPT = "Describe this diagram as a Markdown table."
GREEDY = Params(temperature=0.0, max_tokens=64)


class Interrupt(BaseException):
    """Stands for Streamlit's RerunException: raised from the UI callback when Stop is clicked."""


async def solo(url: str, png: bytes, adapter: str | None) -> str:
    async with WorkerClient(url) as client:
        async for item in client.generate([user_message(PROMPT, image=png)], adapter=adapter,
                                          **GREEDY.request_fields()):
            if isinstance(item, Done):
                return item.content
    raise AssertionError("no done")


async def test_two_outputs_stream_at_the_same_time(worker, png):
    """A/B outputs stream concurrently (both produce tokens before either ends) and equal their solo runs."""
    outputs = [Output("A", "demo-a"), Output("B", None)]
    events: list[Event] = []
    async with WorkerClient(worker.url) as client:
        await run_outputs(client, outputs, [user_message(PROMPT, image=png)], GREEDY, on_events=events.extend)
    assert [o.status for o in outputs] == ["done", "done"]
    assert outputs[0].text == await solo(worker.url, png, "demo-a")
    assert outputs[1].text == await solo(worker.url, png, None)
    assert outputs[0].adapter_load is not None and outputs[0].adapter_load["rank"] == 8
    assert outputs[1].adapter_load is None
    assert all(o.timings is not None and o.usage is not None and o.usage["max_tokens"] == 64 for o in outputs)
    first_end = next(i for i, e in enumerate(events) if e.kind == "end")
    lanes_with_tokens_before_an_end = {e.lane for e in events[:first_end] if e.kind == "token"}
    assert lanes_with_tokens_before_an_end == {0, 1}
    assert [e.lane for e in events if e.kind == "loaded"] == [0]


async def test_an_interrupted_run_cancels_and_records_the_partial_output(worker, png):
    """When the UI callback raises (Stop), the generation is cancelled on the worker and recorded as stopped."""
    outputs = [Output("output", None)]

    def on_events(events: list[Event]) -> None:
        if any(e.kind == "token" for e in events):
            raise Interrupt

    async with WorkerClient(worker.url) as client:
        with pytest.raises(Interrupt):
            await run_outputs(client, outputs, [user_message(PROMPT, image=png)],
                              Params(temperature=0.0, max_tokens=2048), on_events=on_events)
        status = await client.status()
    out = outputs[0]
    assert (out.status, out.finish_reason) == ("stopped", "cancelled")
    assert out.text and out.timings is not None  # the worker's done(cancelled) came back with the text so far
    assert out.usage is not None and out.usage["completion_tokens"] < 2048
    assert status.running == 0


async def test_the_workers_status_is_polled_while_the_outputs_stream(worker, png):
    """With status_every_s, status events come from the first token on and show the run's rows as running."""
    outputs = [Output("A", "demo-a"), Output("B", None)]
    events: list[Event] = []
    async with WorkerClient(worker.url) as client:
        await run_outputs(client, outputs, [user_message(PROMPT, image=png)], Params(temperature=0.0, max_tokens=256),
                          on_events=events.extend, status_every_s=0.05)
    statuses = [e.detail for e in events if e.kind == "status"]
    assert statuses and statuses[0].running >= 1
    first_token = next(i for i, e in enumerate(events) if e.kind == "token")
    assert all(e.kind != "status" for e in events[:first_token])


async def test_an_unreachable_worker_fails_every_output(down_url):
    """Nothing listening: every output ends as an error with the unreachable code."""
    outputs = [Output("A", "demo-a"), Output("B", None)]
    async with WorkerClient(down_url) as client:
        await run_outputs(client, outputs, [user_message(PROMPT)], GREEDY)
    assert [(o.status, o.error and o.error["code"]) for o in outputs] == [("error", "unreachable")] * 2


def test_finish_record_compares_only_when_both_have_text():
    """The comparison is added to an A/B record when both outputs have text, never to a single run."""
    a = Output("A", "demo-a", text="x y", status="done")
    b = Output("B", None, text="x z", status="done")
    record = finish_record(RunRecord(id=1, mode="ab", worker="w", settings={}, outputs=[a, b]))
    assert record.comparison is not None and record.comparison["divergence"]["word"] == 1
    b.status, b.text = "error", ""
    assert finish_record(RunRecord(id=2, mode="ab", worker="w", settings={}, outputs=[a, b])).comparison is None
    assert finish_record(RunRecord(id=3, mode="single", worker="w", settings={}, outputs=[a])).comparison is None


@pytest.mark.parametrize(("code", "retryable", "level", "phrase"), [
    ("unreachable", True, "error", "The worker is down or unreachable"),
    ("loading", True, "info", "still loading its model"),
    ("busy", True, "warning", "The worker is busy (busy)"),
    ("invalid_image", False, "error", "The worker rejected the input (invalid_image)"),
    ("prompt_too_long", False, "error", "The worker rejected the input (prompt_too_long)"),
    ("adapter_not_found", False, "error", "Adapter `x` cannot be used (adapter_not_found)"),
    ("store_unavailable", True, "warning", "The adapter store is unavailable"),
    ("deadline_exceeded", True, "warning", "Trying again later may work"),
    ("internal_error", False, "error", "internal_error: "),
])
def test_explain(code, retryable, level, phrase):
    """Each kind of failure gets a level and a sentence that says what happened."""
    got_level, text = explain({"code": code, "message": "m", "retryable": retryable}, "ws://w", "x")
    assert got_level == level and phrase in text


def test_explain_takes_client_exceptions():
    """A client exception is explained like the error dict it carries."""
    assert explain(WorkerUnavailable("loading", "m", retryable=True))[0] == "info"
