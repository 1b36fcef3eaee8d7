"""The batched transformers engine in-process, on the tiny demo Qwen3-VL in float32.

The correctness contract of continuous batching: every request's greedy output in a batch equals its output alone
(base and adapter rows mixed, text and image requests, different prompt lengths, requests joining halfway), and
alone equals transformers' ``generate`` with PEFT. No tie in the tiny model's logits made a case differ, so the
comparisons are exact.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.validate import inspect_adapter
from inference_worker.engines.transformers import TransformersEngine
from inference_worker.engines.transformers.model import load_model
from wire.errors import ErrorCode

from .engine_harness import Reference, collect, collect_all, picture, request

ADAPTERS = ("demo-a", "demo-b")


@pytest.fixture(scope="module")
def engine(demo):
    # the server's layout on CPU by default (CPU_WEIGHT_LAYOUT=auto with 8 rows); the reference uses the natural one
    eng = TransformersEngine(load_model(str(demo.model_dir), dtype="float32", cpu_weight_layout="transposed"),
                             max_running=16,
                             kv_cache_max_bytes=256 << 20, vision_cache_max_bytes=16 << 20)

    async def add():
        for name in ADAPTERS:
            await eng.add_adapter(name, inspect_adapter(demo.store_dir / name))

    asyncio.run(add())
    yield eng
    asyncio.run(eng.close())


@pytest.fixture(scope="module")
def reference(demo):
    return Reference(demo.model_dir, {name: demo.store_dir / name for name in ADAPTERS})


def mixed_requests(max_tokens: int = 24) -> list:
    """Base and adapter rows, text and image requests, prompts of different lengths."""
    texts = ["Describe the process.", "List every step of this BPMN diagram with its role and the next step.",
             "Hi", "Что делает менеджер после проверки заявки? Ответь подробно."]
    out = []
    for i in range(8):
        images = (picture(i),) if i % 2 else ()
        out.append(request(texts[i % 4], images=images, adapter=(None, *ADAPTERS)[i % 3], max_tokens=max_tokens))
    return out


def test_loads_through_from_pretrained_as_qwen3_vl(engine):
    """The demo checkpoint loads through the same from_pretrained path as a hub model."""
    assert engine.info.model_type == "qwen3_vl" and engine.info.vision
    assert type(engine.lm.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(engine.lm.processor).__name__ == "Qwen3VLProcessor"


async def test_alone_equals_transformers_generate_with_peft(engine, reference):
    """One request at a time, the engine writes exactly what generate() with PEFT writes: base and both adapters,
    with and without an image."""
    for adapter in (None, *ADAPTERS):
        for images in ((), (picture(3),)):
            req = request("Describe the process.", images=images, adapter=adapter, max_tokens=20)
            out = await collect(engine, req)
            assert out.finished.reason == "length" and out.tokens == 20
            assert out.text == reference.generate(req), (adapter, len(images))


async def test_batch_equals_alone(engine):
    """Eight mixed requests at once each write exactly what they write alone."""
    reqs = mixed_requests()
    alone = [await collect(engine, r) for r in mixed_requests()]
    assert len({a.text for a in alone}) == len(alone), "the requests really differ"
    together = await collect_all(engine, reqs)
    assert [t.text for t in together] == [a.text for a in alone]
    assert [t.tokens for t in together] == [a.tokens for a in alone]


async def test_both_weight_layouts_write_the_same(engine, demo):
    """CPU_WEIGHT_LAYOUT changes speed only: a mixed batch writes the same text with the weights natural."""
    natural = TransformersEngine(load_model(str(demo.model_dir), dtype="float32", cpu_weight_layout="natural"),
                                 max_running=16, kv_cache_max_bytes=256 << 20, vision_cache_max_bytes=0)
    try:
        for name in ADAPTERS:
            await natural.add_adapter(name, inspect_adapter(demo.store_dir / name))
        mlp = natural.lm.model.model.language_model.layers[0].mlp.up_proj.weight
        assert mlp.is_contiguous() and not engine.lm.model.model.language_model.layers[0].mlp.up_proj.weight \
            .is_contiguous(), "the two engines really differ in layout"
        assert (natural.status().details["weight_layout"], engine.status().details["weight_layout"]) == (
            "natural", "transposed")
        theirs = await collect_all(natural, mixed_requests())
        ours = await collect_all(engine, mixed_requests())
        assert [t.text for t in theirs] == [o.text for o in ours]
    finally:
        await natural.close()


def test_an_unknown_weight_layout_is_refused(demo):
    with pytest.raises(ValueError, match="natural or transposed"):
        load_model(str(demo.model_dir), cpu_weight_layout="columns")


async def test_preparing_the_prompt_is_not_queueing(engine, monkeypatch):
    """A request alone waits for nothing: its own preparation (chat template, image preprocessing) counts in its
    time to first token, not in its queueing (the playground showed 92 ms "queued" for a lone diagram)."""
    prepare = engine.lm.prepare

    def slow_prepare(turns):
        time.sleep(0.5)
        return prepare(turns)

    monkeypatch.setattr(engine.lm, "prepare", slow_prepare)
    out = await collect(engine, request("Describe the process.", images=(picture(1),), max_tokens=2))
    t = out.finished.timings
    assert t.scheduled_at - t.received_at < 0.4, "preparation counted as queueing"
    assert t.first_token_at - t.scheduled_at >= 0.5


async def test_requests_joining_halfway_equal_alone(engine):
    """Requests that join while others are halfway through, and leave before them, change nobody's output."""
    long_reqs = [request("Describe the process.", adapter=a, max_tokens=120) for a in (None, *ADAPTERS)]
    late = mixed_requests(max_tokens=16)[:5]
    alone = [await collect(engine, r) for r in [*long_reqs, *late]]
    halfway = asyncio.Event()

    def progress(pieces: int) -> None:
        if pieces >= 8:
            halfway.set()

    first = [asyncio.create_task(collect(engine, r, on_piece=progress)) for r in long_reqs]
    await asyncio.wait_for(halfway.wait(), 60)
    second = await collect_all(engine, late)
    assert all(not t.done() for t in first), "the late requests ran while the long ones were running"
    outs = [*(await asyncio.gather(*first)), *second]
    assert [o.text for o in outs] == [a.text for a in alone]


async def test_same_seed_same_text_in_any_batch(engine):
    """A sampled request (temperature, top-k, top-p, repetition penalty, seed) writes the same text alone and in a
    batch of others."""
    def sampled():
        return request("Describe the process.", adapter="demo-a", max_tokens=40, temperature=0.9, top_k=40,
                       top_p=0.9, repetition_penalty=1.2, seed=1234)

    alone = await collect(engine, sampled())
    others = [request("Tell me more.", temperature=1.3, seed=s, max_tokens=30) for s in range(5)]
    together = await collect_all(engine, [*others[:2], sampled(), *others[2:]])
    assert together[2].text == alone.text
    other_seed = await collect(engine, request("Describe the process.", adapter="demo-a", max_tokens=40,
                                               temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.2, seed=7))
    assert other_seed.text != alone.text, "the seed matters"


async def test_extreme_sampling_values_work(engine):
    """Tiny temperatures and repetition penalties that the protocol accepts sample instead of failing."""
    greedy = await collect(engine, request(max_tokens=12))
    for temperature in (1e-40, 1e-300, 5e-324):
        out = await collect(engine, request(max_tokens=12, temperature=temperature, seed=1))
        assert out.finished.error is None and out.text == greedy.text, temperature
    for penalty in (1e-300, 5e-324, 1e300):
        out = await collect(engine, request(max_tokens=12, repetition_penalty=penalty, temperature=0.7, seed=2))
        assert out.finished.error is None and out.tokens == 12, penalty


async def test_cancel_stops_within_two_steps_and_spares_the_others(engine):
    """Aborting a row stops it within two steps; the rows beside it finish exactly as alone."""
    alone = [await collect(engine, r) for r in mixed_requests(max_tokens=30)[:3]]
    for cancel_at in (1, 5, 20):
        victim = request("Describe the process.", max_tokens=400)

        def stop(pieces: int, rid=victim.request_id, at=cancel_at) -> None:
            if pieces == at:
                engine.abort(rid)

        outs = await asyncio.gather(collect(engine, victim, on_piece=stop),
                                    *(collect(engine, r) for r in mixed_requests(max_tokens=30)[:3]))
        cancelled = outs[0]
        assert cancelled.finished.reason == "cancelled" and cancelled.finished.error is None
        assert cancel_at <= len(cancelled.pieces) <= cancel_at + 2
        assert [o.text for o in outs[1:]] == [a.text for a in alone]


async def test_closing_the_stream_aborts_the_request(engine):
    """A consumer that stops listening (a disconnect) ends its row at the next step."""
    stream = engine.generate(request(max_tokens=2000))
    async for _event in stream:
        break
    await stream.aclose()
    deadline = time.monotonic() + 10
    while engine.status().running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.status().running == 0 and engine.status().kv_cache_bytes == 0


async def test_a_failing_row_does_not_disturb_the_others(engine, demo, tmp_path):
    """An adapter whose arithmetic overflows ends its own request with internal_error; the rows beside it are exact."""
    from safetensors.torch import load_file, save_file

    from ..helpers import copy_adapter

    broken = copy_adapter(demo.store_dir / "demo-a", tmp_path / "overflowing")
    tensors = load_file(str(broken / "adapter_model.safetensors"))
    save_file({k: v * 1e18 for k, v in tensors.items()}, str(broken / "adapter_model.safetensors"))
    await engine.add_adapter("overflowing", inspect_adapter(broken))
    try:
        others = mixed_requests(max_tokens=20)
        alone = [await collect(engine, r) for r in mixed_requests(max_tokens=20)]
        outs = await collect_all(engine, [*others[:4], request(adapter="overflowing"), *others[4:]])
        failed = outs.pop(4)
        assert failed.finished.error is not None and failed.finished.error.code == ErrorCode.INTERNAL_ERROR
        assert "non-finite" in failed.finished.error.message or "NaN" in failed.finished.error.message
        assert [o.text for o in outs] == [a.text for a in alone]
    finally:
        await engine.remove_adapter("overflowing")


async def test_abort_of_a_waiting_request_ends_it_before_it_starts(demo):
    """A request aborted while it waits for a row ends cancelled with no token and was never scheduled; the request
    running meanwhile is untouched. (Deadlines are the request front's: it aborts a request whose time is up.)"""
    eng = TransformersEngine(load_model(str(demo.model_dir), dtype="float32"), max_running=1,
                             kv_cache_max_bytes=64 << 20, vision_cache_max_bytes=0)
    try:
        alone = await collect(eng, request(max_tokens=300))
        started = asyncio.Event()
        running = asyncio.create_task(collect(eng, request(max_tokens=300), on_piece=lambda _: started.set()))
        await asyncio.wait_for(started.wait(), 30)
        waiting = request(max_tokens=5)
        queued = asyncio.create_task(collect(eng, waiting))
        deadline = time.monotonic() + 10
        while not eng.scheduler.waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert eng.scheduler.waiting and eng.status().running == 1, "the second request waits for the only row"
        eng.abort(waiting.request_id)
        eng.abort(waiting.request_id)  # idempotent
        cancelled = await queued
        assert cancelled.finished.reason == "cancelled" and cancelled.tokens == 0 and not cancelled.pieces
        assert cancelled.finished.timings.scheduled_at is None and cancelled.events_after_finish == 0
        assert (await running).text == alone.text
    finally:
        await eng.close()


async def test_stop_strings_and_eos(engine):
    """A stop string ends the row with stop and is not streamed; the pieces add up to the text."""
    full = await collect(engine, request(max_tokens=40))
    cut = full.text[len(full.text) // 2:][:3]
    assert cut.strip()
    stopped = await collect(engine, request(max_tokens=40, stop=(cut,)))
    assert stopped.finished.reason == "stop" and cut not in stopped.text
    assert full.text.startswith(stopped.text)


async def test_a_b_pair_encodes_the_image_once(engine):
    """Two adapters that leave the vision tower alone share one vision encoding of the same image."""
    img = picture(42, (160, 128))
    before = engine.status().details
    await collect_all(engine, [request(images=(img,), adapter="demo-a"), request(images=(img,), adapter="demo-b")])
    after = engine.status().details
    assert after["vision_cache_misses"] - before["vision_cache_misses"] == 1
    assert after["vision_cache_hits"] - before["vision_cache_hits"] == 1


async def test_vision_tower_adapter_runs_in_its_prefill(engine, demo, reference, tmp_path):
    """An adapter on the vision tower (all-linear) changes the image's encoding for its request only, as PEFT does."""
    from checkpoints.build import build_lora_adapter

    path = build_lora_adapter(demo.model_dir, tmp_path / "vision", seed=5, target_modules="all-linear")
    info = await engine.add_adapter("vision", inspect_adapter(path))
    assert info.vision
    try:
        ref = Reference(demo.model_dir, {"vision": path})
        img = picture(7, (128, 96))
        req = request("What is in the picture?", images=(img,), adapter="vision", max_tokens=16)
        solo = await collect(engine, req)
        base_req = request("What is in the picture?", images=(img,), max_tokens=16)
        both = await collect_all(engine, [request("What is in the picture?", images=(img,), adapter="vision",
                                                  max_tokens=16), base_req])
        assert both[0].text == solo.text == ref.generate(req)
        assert both[1].text == reference.generate(base_req)
    finally:
        await engine.remove_adapter("vision")


async def test_kv_memory_returns_to_idle_after_1000_requests(engine):
    """1,000 short requests, up to 24 at a time, each end with one Finished; the KV memory is freed afterwards."""
    sem = asyncio.Semaphore(24)
    texts = ["a", "Describe the process.", "Hi there", "List the steps and roles of the diagram in detail."]

    async def one(i: int):
        async with sem:
            return await collect(engine, request(texts[i % 4], adapter=(None, *ADAPTERS)[i % 3],
                                                 max_tokens=1 + i % 4, temperature=0.5 * (i % 2), seed=i))

    outs = await asyncio.gather(*(one(i) for i in range(1000)))
    assert len(outs) == 1000 and all(o.finished.error is None and o.events_after_finish == 0 for o in outs)
    status = engine.status()
    assert (status.running, status.kv_cache_bytes) == (0, 0)
    assert engine.scheduler.cache.allocated_bytes() == 0 and not engine.scheduler.cache.lengths


async def test_kv_bound_makes_admission_wait(demo):
    """With KV memory for two rows only, a third request waits for a row to leave, then runs; too big alone is
    refused at once."""
    lm = load_model(str(demo.model_dir), dtype="float32")
    reqs = [request("Describe the process.", max_tokens=40) for _ in range(3)]
    per_row = (lm.prepare(reqs[0].turns).length + 40) * lm.kv_bytes_per_token()
    eng = TransformersEngine(lm, max_running=8, kv_cache_max_bytes=2 * per_row + per_row // 2,
                             vision_cache_max_bytes=0)
    try:
        peak = [0]

        async def watch():
            while True:
                peak[0] = max(peak[0], eng.status().running)
                assert eng.status().kv_cache_bytes <= eng.status().kv_cache_max_bytes
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        outs = await collect_all(eng, reqs)
        watcher.cancel()
        assert all(o.finished.reason == "length" for o in outs) and peak[0] == 2
        huge = await collect(eng, request("Describe the process.", max_tokens=4000))
        assert huge.finished.error is not None and huge.finished.error.code == ErrorCode.PROMPT_TOO_LONG
    finally:
        await eng.close()


async def test_out_of_memory_ends_the_batch_not_the_engine(engine, monkeypatch):
    """A KV allocation that fails (out of memory on a GPU; simulated here) fails the requests it hit with
    internal_error; the engine goes on serving."""
    real = engine.scheduler.cache.ensure
    failures = [2]

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.scheduler.cache, "ensure", flaky)
    outs = await collect_all(engine, [request(max_tokens=8), request("Hi", max_tokens=8)])
    assert all(o.finished.error is not None and o.finished.error.code == ErrorCode.INTERNAL_ERROR for o in outs)
    after = await collect(engine, request(max_tokens=8))
    assert after.finished.reason == "length" and engine.status().kv_cache_bytes == 0
