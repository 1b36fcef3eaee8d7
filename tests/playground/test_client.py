"""The playground's WebSocket client against a real worker: streaming, routing, cancel, errors, busy, reconnect."""

from __future__ import annotations

import asyncio
import time

import pytest

from inference_worker.embedded import EmbeddedWorker
from inference_worker.server import WorkerServer
from playground.client import (
    InvalidRequest,
    WorkerClient,
    WorkerError,
    WorkerUnavailable,
    new_session_id,
    user_message,
)
from wire.protocol import AdapterLoaded, AdapterProgress, Done

from ..conftest import worker_settings
from .conftest import free_port

PROMPT = "Describe this diagram as a Markdown table."


async def collect(stream) -> tuple[list[str], Done]:
    tokens: list[str] = []
    async for item in stream:
        if isinstance(item, Done):
            return tokens, item
        tokens.append(item)
    raise AssertionError("the stream ended without done")


async def wait_idle(client: WorkerClient, timeout: float = 10) -> int:
    """Poll the worker's status until nothing runs; returns the last ``running``."""
    deadline = time.monotonic() + timeout
    while True:
        running = (await client.status()).running
        if running == 0 or time.monotonic() > deadline:
            return running
        await asyncio.sleep(0.05)


async def test_generate_streams_tokens_then_done(worker, png):
    """Tokens stream as text, then one done whose content is their concatenation, with usage and timings."""
    session_id = new_session_id()
    async with WorkerClient(worker.url) as client:
        tokens, done = await collect(client.generate([user_message(PROMPT, image=png)], session_id=session_id,
                                                     temperature=0, max_tokens=16))
    assert tokens and "".join(tokens) == done.content
    assert done.session_id == session_id
    assert done.usage.max_tokens == 16
    assert done.finish_reason == ("length" if done.usage.completion_tokens == 16 else "stop")
    assert done.timings.ttft_ms is not None and done.timings.ttft_ms > 0
    assert done.adapter is None


async def test_two_generations_on_one_connection_are_routed_apart(worker, png):
    """Two concurrent streams (demo-a, base model) on one connection each get exactly their own solo output."""
    messages = [user_message(PROMPT, image=png)]
    async with WorkerClient(worker.url) as client:
        solo_a = await collect(client.generate(messages, temperature=0, max_tokens=24, adapter="demo-a"))
        solo_base = await collect(client.generate(messages, temperature=0, max_tokens=24, adapter=None))
        both = await asyncio.gather(
            collect(client.generate(messages, temperature=0, max_tokens=24, adapter="demo-a")),
            collect(client.generate(messages, temperature=0, max_tokens=24, adapter=None)),
        )
        assert client.connections_opened == 1
    assert both[0][1].content == solo_a[1].content and both[0][1].adapter == "demo-a"
    assert both[1][1].content == solo_base[1].content and both[1][1].adapter is None
    assert solo_a[1].content != solo_base[1].content  # the adapter changes the output, so routing is observable


async def test_cancel_ends_the_stream_with_a_cancelled_done(worker, png):
    """cancel() stops a long generation within a few tokens: done(cancelled) carries the text so far."""
    session_id = new_session_id()
    async with WorkerClient(worker.url) as client:
        tokens: list[str] = []
        done = None
        async for item in client.generate([user_message(PROMPT, image=png)], session_id=session_id,
                                          temperature=0, max_tokens=2048):
            if isinstance(item, Done):
                done = item
                break
            tokens.append(item)
            if len(tokens) == 3:
                assert await client.cancel(session_id) is True
        assert done is not None and done.finish_reason == "cancelled"
        assert done.content == "".join(tokens)
        assert done.usage.completion_tokens < 100
        assert await client.cancel(session_id) is False  # it has ended: nothing to cancel


async def test_leaving_the_stream_early_cancels_it_on_the_worker(worker, png):
    """Breaking out of the loop (and closing the generator) cancels the generation; the worker goes idle."""
    async with WorkerClient(worker.url) as client:
        stream = client.generate([user_message(PROMPT, image=png)], temperature=0, max_tokens=2048)
        async for _ in stream:
            break
        await stream.aclose()
        assert await wait_idle(client) == 0
        assert client.connections_opened == 1


async def test_closing_the_client_ends_its_streams_and_the_worker_cancels_them(worker, png):
    """close() fails the open stream with 'disconnected' and the worker stops generating for it."""
    client = WorkerClient(worker.url)
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _ in client.generate([user_message(PROMPT, image=png)], temperature=0, max_tokens=2048):
            first_token.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_token.wait(), 30)
    await client.close()
    with pytest.raises(WorkerUnavailable) as caught:
        await task
    assert caught.value.code == "disconnected" and caught.value.retryable is True
    async with WorkerClient(worker.url) as observer:
        assert await wait_idle(observer) == 0


async def test_bad_image_is_invalid_image(worker):
    """Bytes that are not an image end the generation with the worker's invalid_image (not retryable)."""
    session_id = new_session_id()
    async with WorkerClient(worker.url) as client:
        with pytest.raises(WorkerError) as caught:
            await collect(client.generate([user_message(PROMPT, image=b"this is not an image")],
                                          session_id=session_id, max_tokens=8))
        assert caught.value.code == "invalid_image"
        assert caught.value.retryable is False
        assert caught.value.session_id == session_id
        assert (await client.status()).ready is True  # the connection stays usable


async def test_unknown_adapter_is_adapter_not_found(worker):
    """An unknown adapter fails load_adapter and a generate naming it with adapter_not_found."""
    async with WorkerClient(worker.url) as client:
        with pytest.raises(WorkerError) as loading:
            await client.load_adapter("no-such-adapter")
        assert (loading.value.code, loading.value.adapter_path) == ("adapter_not_found", "no-such-adapter")
        with pytest.raises(WorkerError) as generating:
            await collect(client.generate([user_message(PROMPT)], adapter="no-such-adapter", max_tokens=4))
        assert generating.value.code == "adapter_not_found" and generating.value.retryable is False


async def test_invalid_request_is_refused_before_sending(worker):
    """A request the protocol forbids (top_p 0) raises InvalidRequest without even connecting."""
    client = WorkerClient(worker.url)
    with pytest.raises(InvalidRequest) as caught:
        await collect(client.generate([user_message(PROMPT)], top_p=0.0))
    assert caught.value.code == "invalid_message" and "top_p" in caught.value.message
    assert client.connections_opened == 0


async def test_status_and_list_adapters(worker, demo):
    """status reports the worker (model, limits); list_adapters lists the store's adapters with their facts."""
    async with WorkerClient(worker.url) as client:
        status, adapters = await asyncio.gather(client.status(), client.list_adapters())
        assert await client.ping() < 5
    assert status.ready is True and status.model == demo.model_dir.name and status.vision is True
    assert status.limits["max_new_tokens"] == worker.settings.max_new_tokens
    assert [a.name for a in adapters] == ["demo-a", "demo-b"]
    assert all(a.rank == 8 and a.digest for a in adapters)


async def test_concurrent_requests_get_their_own_replies(worker):
    """Requests sent at once on one connection are answered by the request_id they carry, whatever the order."""
    async with WorkerClient(worker.url) as client:
        loads = [client.load_adapter(path) for path in ("demo-a", "no-such-adapter", "demo-b", None, "demo-a")]
        results = await asyncio.gather(client.status(), client.list_adapters(), client.ping(), *loads,
                                       client.status(), return_exceptions=True)
        assert client.connections_opened == 1
    first_status, adapters, rtt, *loaded, last_status = results
    assert first_status.type == "status" and last_status.type == "status" and rtt < 5
    assert [a.name for a in adapters] == ["demo-a", "demo-b"]
    assert [getattr(r, "adapter_path", None) for r in loaded] == ["demo-a", "no-such-adapter", "demo-b", None, "demo-a"]
    assert isinstance(loaded[1], WorkerError) and loaded[1].code == "adapter_not_found"
    assert loaded[3].type == "adapter_unloaded"


async def test_load_adapter_surfaces_progress(demo, adapter_root):
    """A first load yields adapter_progress for the adapter, then adapter_loaded with its facts."""
    with EmbeddedWorker(worker_settings(demo, adapter_root)) as fresh:
        async with WorkerClient(fresh.url) as client:
            events = [e async for e in client.load_adapter_events("demo-b")]
    assert len(events) >= 2
    assert all(isinstance(e, AdapterProgress) and e.adapter_path == "demo-b" for e in events[:-1])
    loaded = events[-1]
    assert isinstance(loaded, AdapterLoaded)
    assert (loaded.name, loaded.rank, loaded.adapter_path) == ("demo-b", 8, "demo-b")
    assert events[-2].stage == "loading"  # the local store has nothing to download: the last stage is loading


async def test_a_pipelined_load_applies_to_the_generate_sent_after_it(worker):
    """start_load sends load_adapter without waiting: a generate sent next runs with that adapter; a pipelined load
    that fails raises when its events are read and leaves the connection's adapter as it was."""
    async with WorkerClient(worker.url) as client:
        load = await client.start_load("demo-b")
        _, done = await collect(client.generate([user_message(PROMPT)], temperature=0, max_tokens=4))
        events = [e async for e in load]
        assert done.adapter == "demo-b"
        assert isinstance(events[-1], AdapterLoaded) and events[-1].adapter_path == "demo-b"

        failed = await client.start_load("no-such-adapter")
        _, done = await collect(client.generate([user_message(PROMPT)], temperature=0, max_tokens=4))
        with pytest.raises(WorkerError) as caught:
            _ = [e async for e in failed]
        assert caught.value.code == "adapter_not_found"
        assert done.adapter == "demo-b"


async def test_busy_is_a_retryable_worker_error(demo, adapter_root, png):
    """With one slot and no queue, a second generate gets busy (retryable) while the first streams."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=1, max_queue_size=0)
    with EmbeddedWorker(settings) as small:
        async with WorkerClient(small.url) as first, WorkerClient(small.url) as second:
            session_id = new_session_id()
            stream = first.generate([user_message(PROMPT, image=png)], session_id=session_id, max_tokens=2048,
                                    temperature=0)
            await stream.__anext__()  # the first generation holds the only slot
            with pytest.raises(WorkerError) as caught:
                await collect(second.generate([user_message(PROMPT)], max_tokens=4))
            assert (caught.value.code, caught.value.retryable) == ("busy", True)
            await first.cancel(session_id)
            _, done = await collect(stream)
            assert done.finish_reason == "cancelled"


async def test_worker_down_is_unreachable():
    """Connecting to a port nobody listens on raises WorkerUnavailable('unreachable', retryable)."""
    port = free_port()
    client = WorkerClient(f"ws://127.0.0.1:{port}")
    with pytest.raises(WorkerUnavailable) as caught:
        await client.status()
    assert caught.value.code == "unreachable" and caught.value.retryable is True
    assert "connection refused" in caught.value.message


async def test_worker_still_loading_is_loading(demo, adapter_root):
    """A worker whose model is not loaded yet answers the handshake with 503: WorkerUnavailable('loading')."""
    server = WorkerServer(worker_settings(demo, adapter_root))
    await server.start(load=False)
    try:
        client = WorkerClient(f"ws://127.0.0.1:{server.port}")
        with pytest.raises(WorkerUnavailable) as caught:
            await client.status()
        assert caught.value.code == "loading" and caught.value.retryable is True
    finally:
        await server.stop(0)


async def test_reconnects_after_the_worker_restarts(demo, adapter_root, png):
    """After the worker stops, calls fail clearly; once a new worker is on the same port, the same client works."""
    first = EmbeddedWorker(worker_settings(demo, adapter_root)).start()
    port = first.port
    client = WorkerClient(first.url)
    try:
        _, before = await collect(client.generate([user_message(PROMPT, image=png)], temperature=0, max_tokens=8))
        await asyncio.to_thread(first.stop)
        with pytest.raises(WorkerUnavailable) as down:
            await client.status()
        assert down.value.code == "unreachable"
        second = EmbeddedWorker(worker_settings(demo, adapter_root, port=port)).start()
        try:
            assert (await client.status()).ready is True
            _, after = await collect(client.generate([user_message(PROMPT, image=png)], temperature=0,
                                                     max_tokens=8))
            assert after.content == before.content
            assert client.connections_opened == 2
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        await client.close()
