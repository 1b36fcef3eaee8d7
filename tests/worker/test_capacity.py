"""Admission, deadlines, LRU eviction and the default adapter: each on a worker configured for it."""

from __future__ import annotations

import time

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, greedy, load_at_once


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_answers_busy_at_once(demo, adapter_root):
    """With 1 running and 1 queued, a third generate gets busy (retryable) immediately; the others finish."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=1, max_queue_size=1)
    with EmbeddedWorker(settings) as w, Client(w.url) as c:
        c.send({"type": "generate", "session_id": "run", **greedy(max_tokens=400)})
        wait_for(lambda: w.service.admission.running == 1)
        c.send({"type": "generate", "session_id": "wait", **greedy(max_tokens=5)})
        wait_for(lambda: w.service.admission.queued == 1)
        started = time.monotonic()
        c.send({"type": "generate", "session_id": "third", **greedy(max_tokens=5)})
        terminals = {}
        while len(terminals) < 3:
            m = c.recv()
            if m["type"] in ("done", "error"):
                terminals[m["session_id"]] = m
                if m["session_id"] == "third":
                    assert time.monotonic() - started < 1.0, "busy must come at once"
        assert terminals["third"]["code"] == "busy" and terminals["third"]["retryable"] is True
        assert terminals["run"]["type"] == "done" and terminals["wait"]["type"] == "done"
        assert terminals["wait"]["timings"]["queue_ms"] > 0


def test_queued_request_can_be_cancelled(demo, adapter_root):
    """A generate cancelled while it waits in the queue ends with done(cancelled) and no tokens."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=1, max_queue_size=4)
    with EmbeddedWorker(settings) as w, Client(w.url) as c:
        c.send({"type": "generate", "session_id": "run", **greedy(max_tokens=400)})
        wait_for(lambda: w.service.admission.running == 1)
        c.send({"type": "generate", "session_id": "queued", **greedy(max_tokens=5)})
        wait_for(lambda: w.service.admission.queued == 1)
        c.send({"type": "cancel", "session_id": "queued"})
        stream = c.collect("queued")
        assert stream.terminal["finish_reason"] == "cancelled" and not stream.tokens
        assert c.collect("run").terminal["type"] == "done"
        wait_for(lambda: w.service.admission.admitted == 0)


def test_deadline_overrun_is_an_error(demo, adapter_root):
    """A generation past GENERATION_TIMEOUT_S is stopped and ends with deadline_exceeded (one terminal)."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, generation_timeout_s=0.5)) as w, Client(w.url) as c:
        stream = c.generate(**greedy(max_tokens=2000), session_id="slow")
        assert stream.terminal["type"] == "error" and stream.terminal["code"] == "deadline_exceeded"
        assert stream.terminal["session_id"] == "slow" and stream.terminal["retryable"] is True
        assert len(stream.tokens) > 0 and stream.text
        assert c.generate(**greedy(max_tokens=3)).terminal["type"] == "done"


def test_lru_eviction_and_transparent_reload(demo, adapter_root):
    """MAX_LOADED_ADAPTERS=1: loading demo-b evicts demo-a; a connection on demo-a reloads it on its next generate."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_loaded_adapters=1)) as w:
        with Client(w.url) as a, Client(w.url) as b:
            a.load("demo-a")
            first = a.generate(**greedy(max_tokens=30)).terminal["content"]
            b.load("demo-b")
            wait_for(lambda: [e.ref for e in w.service.registry.loaded.values()] == ["demo-b"])
            again = a.generate(**greedy(max_tokens=30)).terminal
            assert again["adapter"] == "demo-a" and again["content"] == first
            assert [e.ref for e in w.service.registry.loaded.values()] == ["demo-a"]


def test_no_eviction_while_a_generation_uses_the_adapter(demo, adapter_root):
    """An adapter in use by a running stream is not evicted; the stream finishes on it, then it is released."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_loaded_adapters=1)) as w:
        with Client(w.url) as a, Client(w.url) as b:
            a.load("demo-a")
            solo = a.generate(**greedy(max_tokens=300)).terminal["content"]
            a.send({"type": "generate", "session_id": "long", **greedy(max_tokens=300)})
            assert a.recv()["type"] == "token"
            assert b.load("demo-b")["type"] == "adapter_loaded"
            assert {e.ref for e in w.service.registry.loaded.values()} == {"demo-a", "demo-b"}
            done = a.collect("long").terminal
            assert done["adapter"] == "demo-a" and solo.startswith(done["content"][: len(solo)])
            assert done["content"] == solo
            wait_for(lambda: [e.ref for e in w.service.registry.loaded.values()] == ["demo-b"])


def test_default_adapter_applies_to_new_connections(demo, adapter_root):
    """INFERENCE_DEFAULT_ADAPTER is active on new connections; unloading returns that connection to the base."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, default_adapter="demo-a")) as w:
        with Client(w.url) as c:
            done = c.generate(**greedy(max_tokens=10)).terminal
            assert done["adapter"] == "demo-a"
            c.load(None)
            assert c.generate(**greedy(max_tokens=10)).terminal["adapter"] is None
        status = Client(w.url).request({"type": "status"}, "status")
        assert any(x["default"] and x["adapter_path"] == "demo-a" for x in status["loaded_adapters"])


def test_broken_default_adapter_falls_back_to_base(demo, adapter_root, caplog):
    """A missing default adapter logs a warning and the worker serves the base model."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, default_adapter="no-such-adapter")) as w:
        with Client(w.url) as c:
            assert c.generate(**greedy(max_tokens=5)).terminal["adapter"] is None
    assert any("INFERENCE_DEFAULT_ADAPTER" in r.getMessage() for r in caplog.records)


def test_two_clients_loading_the_same_adapter_share_one_load(demo, adapter_root):
    """Concurrent load_adapter of one adapter injects it once."""
    with EmbeddedWorker(worker_settings(demo, adapter_root)) as w:
        replies = load_at_once(w.url, 4, "demo-b")
        assert [r["type"] for r in replies] == ["adapter_loaded"] * 4
        assert len(w.service.registry.loaded) == 1
        assert w.service.metrics.adapter_loads.labels("cached")._value.get() >= 1


def test_connection_counts_stay_right_through_eviction_and_reload(demo, adapter_root):
    """status counts each connection's adapter correctly after evictions, reloads and switches."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_loaded_adapters=1)) as w:
        with Client(w.url) as a, Client(w.url) as b:
            a.load("demo-a")
            b.load("demo-b")  # evicts demo-a
            assert a.generate(**greedy(max_tokens=4)).terminal["adapter"] == "demo-a"  # reloads it
            b.load("demo-a")
            a.load(None)
            status = a.request({"type": "status"}, "status")
            counts = {x["adapter_path"]: x["connections"] for x in status["loaded_adapters"]}
            assert counts == {"demo-a": 1}


def test_default_adapter_is_never_evicted(demo, adapter_root):
    """INFERENCE_DEFAULT_ADAPTER stays loaded whatever else is loaded; new connections get it without a reload."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, default_adapter="demo-a", max_loaded_adapters=1)) as w:
        with Client(w.url) as c:
            c.load("demo-b")
        refs = {e.ref for e in w.service.registry.loaded.values()}
        assert "demo-a" in refs
        loads = w.service.metrics.adapter_loads.labels("loaded")._value.get()
        with Client(w.url) as fresh:
            assert fresh.generate(**greedy(max_tokens=4)).terminal["adapter"] == "demo-a"
        assert w.service.metrics.adapter_loads.labels("loaded")._value.get() == loads


def test_batch_defaults_and_kv_bound_in_status(demo, adapter_root):
    """Unset MAX_BATCH_ROWS: 8 rows on CPU/MPS, 32 on CUDA; empty values are unset; status shows the KV bound."""
    from inference_worker.config import Settings

    unset = Settings(max_batch_rows="", kv_cache_max_bytes="")
    assert unset.max_batch_rows is None and unset.kv_cache_max_bytes is None
    assert (unset.batch_rows_for("cpu"), unset.batch_rows_for("mps"), unset.batch_rows_for("cuda")) == (8, 8, 32)
    assert Settings(max_batch_rows=3).batch_rows_for("cuda") == 3
    with EmbeddedWorker(worker_settings(demo, adapter_root, kv_cache_max_bytes=64 << 20)) as w, Client(w.url) as c:
        status = c.request({"type": "status"}, "status")
        assert status["max_running"] == (32 if status["device"] == "cuda" else 8)
        assert status["engine"] == "transformers" and status["kv_cache_max_bytes"] == 64 << 20
        assert status["kv_cache_bytes"] == 0, "no KV memory is held while idle"
