"""Clients beyond capacity: the queue fills, the rest get busy at once, no cross-talk, one terminal each."""

from __future__ import annotations

import threading
import time

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, greedy

PROMPTS = ["Describe the process diagram.", "List the roles.", "What comes after the gateway?"]


def test_overload_without_cross_talk(demo, adapter_root):
    """12 clients × 3 requests on 2 slots + a queue of 4: every generate gets exactly one terminal; each done is
    exactly what its adapter and prompt give alone; the rest are busy (retryable); counters return to zero."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=2, max_queue_size=4)
    adapters = [None, "demo-a", "demo-b"]
    with EmbeddedWorker(settings) as w:
        solo = {}
        with Client(w.url) as c:
            for adapter in adapters:
                for n, prompt in enumerate(PROMPTS):
                    solo[adapter, n] = c.generate(**greedy(prompt, max_tokens=24), adapter=adapter).terminal["content"]
        assert len(set(solo.values())) == len(solo)
        results: dict[int, tuple[object, list[dict]]] = {}
        barrier = threading.Barrier(12)

        def client(i):
            adapter = adapters[i % 3]
            with Client(w.url) as c:
                c.load(adapter)
                barrier.wait()
                for n, prompt in enumerate(PROMPTS):
                    c.send({"type": "generate", "session_id": f"{i}-{n}", **greedy(prompt, max_tokens=24)})
                seen = []
                while sum(m["type"] in ("done", "error") for m in seen) < len(PROMPTS):
                    seen.append(c.recv(120))
                c.send({"type": "ping"})
                after = c.until("pong")
                results[i] = (adapter, seen + after)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert len(results) == 12
        busy = done = 0
        for i, (adapter, seen) in results.items():
            assert seen[-1]["type"] == "pong" and all(m["type"] != "pong" for m in seen[:-1])
            terminals = [m for m in seen if m["type"] in ("done", "error")]
            assert sorted(m["session_id"] for m in terminals) == [f"{i}-{n}" for n in range(len(PROMPTS))]
            for m in terminals:
                n = int(m["session_id"].split("-")[1])
                if m["type"] == "error":
                    assert m["code"] == "busy" and m["retryable"] is True
                    assert not [t for t in seen if t["type"] == "token" and t["session_id"] == m["session_id"]]
                    busy += 1
                    continue
                done += 1
                sid = m["session_id"]
                tokens = "".join(t["content"] for t in seen if t["type"] == "token" and t["session_id"] == sid)
                assert m["adapter"] == adapter and m["content"] == solo[adapter, n] == tokens
        assert busy > 0 and done >= 6
        deadline = time.monotonic() + 5
        while w.service.admission.admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (w.service.admission.admitted, w.service.admission.running) == (0, 0)
        assert all(e.running == 0 for e in w.service.registry.loaded.values())
