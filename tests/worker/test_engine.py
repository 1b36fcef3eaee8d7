"""The engine in-process: cancellation latency, thread-local adapters, the real from_pretrained path."""

from __future__ import annotations

import threading

import pytest

from adapters.validate import inspect_adapter
from inference_worker.engine import ChatTurn, Engine, Job
from inference_worker.lora import LoraRuntime


@pytest.fixture(scope="module")
def engine(demo):
    return Engine.load(str(demo.model_dir))


def job(engine, max_new_tokens=64, adapter=None, **kw):
    pieces: list[str] = []
    j = Job([ChatTurn("user", "Describe the process.")], max_new_tokens,
            engine.sampling(temperature=0, top_k=None, top_p=None, repetition_penalty=None, seed=0),
            [], adapter, threading.Event(), pieces.append, **kw)
    return j, pieces


def test_loads_through_from_pretrained_as_qwen3_vl(engine):
    """The demo checkpoint loads through the same from_pretrained path as a hub model."""
    assert engine.info.model_type == "qwen3_vl" and engine.info.vision
    assert type(engine.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(engine.processor).__name__ == "Qwen3VLProcessor"


@pytest.mark.parametrize("cancel_at", [1, 5, 20])
def test_cancel_stops_within_two_tokens(engine, cancel_at):
    """Setting the cancel event stops generate() within two more tokens."""
    count = [0]
    j, _ = job(engine, max_new_tokens=500)

    def on_token(_now):
        count[0] += 1
        if count[0] == cancel_at:
            j.cancel.set()

    j.on_token = on_token
    result = engine.generate(j)
    assert result.finish_reason == "cancelled"
    assert cancel_at <= result.completion_tokens <= cancel_at + 2


def test_pieces_add_up_to_the_decoded_output(engine):
    """The streamed pieces (empty ones dropped) concatenate to the full decode of the generated ids."""
    j, pieces = job(engine, max_new_tokens=80)
    result = engine.generate(j)
    assert all(pieces) and result.completion_tokens == 80
    assert result.finish_reason == "length"


def test_thread_local_adapters_do_not_cross(engine, demo):
    """Two threads generating at once with different adapters each get their solo output."""
    runtime = LoraRuntime(engine.model)
    for name in ("demo-a", "demo-b"):
        facts = inspect_adapter(demo.store_dir / name)
        runtime.inject(name, facts, runtime.check_compatible(facts))
    try:
        solo = {}
        for name in ("demo-a", "demo-b", None):
            j, pieces = job(engine, adapter=name)
            engine.generate(j)
            solo[name] = "".join(pieces)
        assert len(set(solo.values())) == 3
        out: dict[object, list[str]] = {}

        def run(name):
            results = []
            for _ in range(4):
                j, pieces = job(engine, adapter=name)
                engine.generate(j)
                results.append("".join(pieces))
            out[name] = results

        threads = [threading.Thread(target=run, args=(n,)) for n in ("demo-a", "demo-b", None)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert out == {n: [solo[n]] * 4 for n in solo}
    finally:
        for name in ("demo-a", "demo-b"):
            runtime.delete(name)
    j, pieces = job(engine)
    engine.generate(j)
    assert "".join(pieces) == solo[None], "deleting every adapter restores the base exactly"


def test_prompt_too_long(engine):
    """A prompt over MAX_PROMPT_TOKENS is prompt_too_long before any generation."""
    from inference_worker.errors import ErrorCode, InputError

    small = Engine(engine.model, engine.processor, engine.tokenizer, engine.info, 64 * 64, 512 * 512, 10)
    j, _ = job(small)
    with pytest.raises(InputError) as info:
        small.generate(j)
    assert info.value.code == ErrorCode.PROMPT_TOO_LONG
