"""The request front, ``Service.generate``, driven directly: no socket, the demo model on the transformers engine."""

from __future__ import annotations

import asyncio
import json

import pytest

from inference_worker.events import Accepted, AdapterHandle, Completed, Failed, TextDelta
from inference_worker.service import Service
from wire import protocol as p
from wire.errors import ErrorCode, ShuttingDown

from ..conftest import worker_settings
from ..helpers import greedy


def generate(**fields):
    return p.parse_client_message(json.dumps({"type": "generate", **greedy(**fields)}))


async def events_of(stream):
    return [event async for event in stream]


@pytest.fixture
async def service(demo, adapter_root, request):
    settings = worker_settings(demo, adapter_root, **getattr(request, "param", {}))
    service = Service(settings)
    await service.start()
    yield service
    await service.close()


async def test_a_request_is_accepted_streams_and_ends_once(service):
    """Accepted first, then text pieces, then one Completed whose content is the pieces joined; nothing is held
    afterwards."""
    events = await events_of(service.generate(generate(max_tokens=12), request_id="r1"))
    assert events[0] == Accepted("r1", 12)
    end = events[-1]
    assert isinstance(end, Completed) and end.finish_reason in ("stop", "length")
    assert all(isinstance(e, TextDelta) for e in events[1:-1])
    assert end.content == "".join(e.text for e in events[1:-1])
    assert end.usage.completion_tokens >= 1 and end.usage.max_tokens == 12 and end.seed is None
    assert service.admission.admitted == 0 and not service._flights


async def test_a_refused_request_yields_only_its_error(service):
    """Bad input is one Failed with its code and no Accepted; nothing is admitted."""
    refused = await events_of(service.generate(generate(stop=["x" * 1000])))
    assert len(refused) == 1 and isinstance(refused[0], Failed)
    assert refused[0].error.code == ErrorCode.INVALID_MESSAGE
    assert service.admission.admitted == 0


@pytest.mark.parametrize("service", [{"max_batch_rows": 1, "max_queue_size": 1}], indirect=True)
async def test_past_the_queue_a_request_is_busy_at_once(service):
    """With a row and a queue place taken, the next request is refused with busy before anything is awaited."""
    running = service.generate(generate(max_tokens=2000))
    waiting = service.generate(generate(max_tokens=5))
    assert isinstance(await anext(running), Accepted) and isinstance(await anext(waiting), Accepted)
    third = service.generate(generate(max_tokens=5))
    refused = await anext(third)
    assert isinstance(refused, Failed) and refused.error.code == ErrorCode.BUSY and refused.error.retryable
    for stream in (running, waiting):
        await stream.aclose()
    assert service.admission.admitted == 0


async def test_abort_ends_a_request_as_cancelled_or_with_the_error_given(service):
    """abort() without an error ends the stream with a cancelled Completed; with one, with that error."""
    for error, expected in ((None, "cancelled"), (ShuttingDown("bye"), ErrorCode.SHUTTING_DOWN)):
        stream = service.generate(generate(max_tokens=2000), request_id="long")
        assert isinstance(await anext(stream), Accepted)
        assert isinstance(await anext(stream), TextDelta)  # it runs
        assert service.abort("long", error)
        end = (await events_of(stream))[-1]
        got = end.finish_reason if isinstance(end, Completed) else end.error.code
        assert got == expected
    assert not service.abort("long")  # over: nothing to stop


@pytest.mark.parametrize("service", [{"generation_timeout_s": 0.3}], indirect=True)
async def test_the_deadline_is_the_fronts(service):
    """GENERATION_TIMEOUT_S ends a request with deadline_exceeded (retryable), whatever the engine."""
    end = (await events_of(service.generate(generate(max_tokens=4000))))[-1]
    assert isinstance(end, Failed) and end.error.code == ErrorCode.DEADLINE_EXCEEDED and end.error.retryable
    assert service.admission.admitted == 0


async def test_closing_the_stream_early_stops_the_request_and_gives_everything_back(service):
    """A consumer that stops listening (aclose) stops the engine's request, unpins its adapter and releases its
    admission."""
    stream = service.generate(generate(max_tokens=2000, adapter="demo-a"))
    assert isinstance(await anext(stream), Accepted)
    assert isinstance(await anext(stream), TextDelta)
    entry = next(e for e in service.registry.loaded.values() if e.ref == "demo-a")
    assert entry.running == 1
    await stream.aclose()
    assert entry.running == 0 and service.admission.admitted == 0
    for _ in range(200):
        if service.engine.status().running == 0:
            break
        await asyncio.sleep(0.01)
    assert service.engine.status().running == 0


async def test_a_request_waits_for_its_connections_adapter_change(service):
    """A connection's adapter still loading (a future) is awaited before the request is pinned to it; an adapter
    named in the request wins over it."""
    pending = asyncio.get_running_loop().create_future()
    stream = service.generate(generate(max_tokens=4), adapter=pending)
    assert isinstance(await anext(stream), Accepted)
    rest = asyncio.ensure_future(events_of(stream))
    await asyncio.sleep(0.05)
    assert not rest.done()
    pending.set_result(AdapterHandle("demo-b"))
    assert (await rest)[-1].adapter == "demo-b"
    named = await events_of(service.generate(generate(max_tokens=4, adapter="demo-a"), adapter=AdapterHandle("demo-b")))
    assert named[-1].adapter == "demo-a"


async def test_a_request_stopped_before_its_adapter_is_pinned_leaves_it_unpinned(service):
    """Cancelled while its connection's adapter is still loading: a cancelled end at once, and the adapter the
    request goes on to pin in the background is given back."""
    pending = asyncio.get_running_loop().create_future()
    stream = service.generate(generate(max_tokens=4), request_id="early", adapter=pending)
    assert isinstance(await anext(stream), Accepted)
    rest = asyncio.ensure_future(events_of(stream))
    await asyncio.sleep(0.05)  # its image-less turns are built; it waits for the adapter
    service.abort("early")
    end = (await rest)[-1]
    assert isinstance(end, Completed) and end.finish_reason == "cancelled" and end.usage.completion_tokens == 0
    pending.set_result(AdapterHandle("demo-a"))  # the load finishes: the late pin happens, and is undone
    for _ in range(300):
        entry = next((e for e in service.registry.loaded.values() if e.ref == "demo-a"), None)
        if entry is not None and entry.running == 0:
            break
        await asyncio.sleep(0.01)
    assert entry is not None and entry.running == 0
    assert service.admission.admitted == 0


async def test_drain_ends_what_outlives_the_grace_period(service):
    """drain() refuses new requests with shutting_down and ends running ones past the grace period."""
    stream = service.generate(generate(max_tokens=4000))
    assert isinstance(await anext(stream), Accepted)
    rest = asyncio.ensure_future(events_of(stream))
    await service.drain(0.2)
    end = (await rest)[-1]
    assert isinstance(end, Failed) and end.error.code == ErrorCode.SHUTTING_DOWN
    refused = await events_of(service.generate(generate()))
    assert isinstance(refused[0], Failed) and refused[0].error.code == ErrorCode.SHUTTING_DOWN
