"""What only the vLLM engine must show: its greedy output is the transformers engine's, token for token; base rows
stay base beside adapter rows whatever vLLM's LoRA slots hold; a rank over VLLM_MAX_LORA_RANK is refused at load;
status and /metrics report vLLM's scheduler.

These run against the suite's vLLM target (the same worker, started once per session) and compare with an
in-process transformers worker on the same demo checkpoint (float32 on CPU for both).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request

import pytest

from ..helpers import Client, greedy, image_b64, image_message


@pytest.fixture
def vllm(target):
    if target.engine != "vllm":
        pytest.skip("vLLM engine only")
    return target


def _metrics(target) -> str:
    with urllib.request.urlopen(target.http + "/metrics", timeout=10) as r:
        return r.read().decode()


REQUESTS = {
    "text": greedy("Explain the swimlanes and the gateways.", max_tokens=64),
    "image": {"messages": image_message(image_b64((320, 240))), "max_tokens": 32, "temperature": 0},
    "image-odd-size": {"messages": image_message(image_b64((201, 77), color=(200, 30, 90))), "max_tokens": 32,
                       "temperature": 0},
    "stop": greedy("Explain the swimlanes and the gateways.", max_tokens=64, stop=["e"]),
}


def _outputs(url: str) -> dict[str, dict]:
    out = {}
    with Client(url) as c:
        for adapter in (None, "demo-a", "demo-b"):
            c.load(adapter)
            for name, req in REQUESTS.items():
                done = c.generate(**req).terminal
                out[f"{adapter}/{name}"] = {k: done.get(k) for k in ("type", "content", "finish_reason", "usage")}
    return out


def test_greedy_output_equals_the_transformers_engine(vllm, worker):
    """Base, demo-a and demo-b, text and images, a stop string: the same text, finish reason and token counts as
    the transformers engine on the same float32 checkpoint."""
    ours, theirs = _outputs(vllm.url), _outputs(worker.url)
    for key in theirs:
        assert theirs[key]["type"] == "done" and theirs[key]["content"], key
        assert ours[key] == theirs[key], key


def test_base_rows_stay_base_after_every_lora_slot_was_filled(vllm):
    """vLLM keeps adapters in its LoRA slots after their requests end. Once demo-a and demo-b have filled both slots
    (VLLM_MAX_LORAS=2), base requests batched with demo-a requests must still get no adapter (vLLM's CPU path used to
    give them the last slot's adapter, demo-b's)."""
    req = greedy("Explain the swimlanes and the gateways.", max_tokens=48)
    solo = {}
    for adapter in ("demo-b", "demo-a", None):  # demo-b ends up in a slot, unused by what follows
        with Client(vllm.url) as c:
            c.load(adapter)
            solo[adapter] = c.generate(**req).terminal["content"]
    assert solo[None] not in (solo["demo-a"], solo["demo-b"])
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def run(name: str, adapter: str | None) -> None:
        with Client(vllm.url) as c:
            c.load(adapter)
            outs = []
            for _ in range(3):
                barrier.wait(60)
                outs.append(c.generate(**req).terminal["content"])
            results[name] = outs

    rows = {"base-1": None, "base-2": None, "a-1": "demo-a", "a-2": "demo-a"}
    threads = [threading.Thread(target=run, args=item) for item in rows.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert set(results) == set(rows)
    for name, adapter in rows.items():
        assert results[name] == [solo[adapter]] * 3, f"cross-talk on {name}"


def test_rank_over_max_lora_rank_is_refused_at_load(vllm, demo, adapter_root):
    """An adapter of rank 128 (VLLM_MAX_LORA_RANK is 64) is adapter_incompatible at load, naming the setting;
    nothing changes."""
    from checkpoints.build import build_lora_adapter

    path = build_lora_adapter(demo.model_dir, adapter_root / "rank-128", seed=5, rank=128, alpha=128)
    with Client(vllm.url) as c:
        before = c.request({"type": "status"}, "status")["loaded_adapters"]
        err = c.load(str(path))
        assert err["type"] == "error" and err["code"] == "adapter_incompatible", err
        assert "VLLM_MAX_LORA_RANK" in err["message"]
        assert c.request({"type": "status"}, "status")["loaded_adapters"] == before
        assert c.generate(**greedy(max_tokens=8)).terminal["type"] == "done"


def test_status_and_metrics_report_vllms_scheduler(vllm):
    """While a generation runs, status and /metrics show vLLM's running request and its KV-cache use; the engine
    details name vLLM's LoRA settings."""
    with Client(vllm.url) as c:
        c.send({"type": "generate", "session_id": "long", **greedy(max_tokens=vllm.max_new_tokens)})
        assert c.recv()["type"] == "token"
        watcher = Client(vllm.url)
        try:
            deadline = time.monotonic() + 15
            while True:
                # c keeps reading its tokens meanwhile (into its backlog): a client that stops reading stops
                # answering the worker's keepalive pings, and a slow machine would see the worker drop it.
                with contextlib.suppress(TimeoutError):
                    while True:
                        c.backlog.append(json.loads(c.ws.recv(timeout=0)))
                status = watcher.request({"type": "status"}, "status")
                if (status["running"] == 1 and status["kv_cache_bytes"] > 0) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            metrics = _metrics(vllm)
        finally:
            watcher.close()
        c.send({"type": "cancel", "session_id": "long"})
        assert c.collect("long").terminal["finish_reason"] == "cancelled"
    assert status["engine"] == "vllm" and status["running"] == 1, status
    assert 0 < status["kv_cache_bytes"] <= status["kv_cache_max_bytes"]
    details = status["engine_details"]
    assert details["engine"] == "vllm" and details["max_loras"] == 2 and details["max_lora_rank"] == 64
    assert 0 < details["kv_cache_usage"] <= 1
    assert "inference_running_generations" in metrics and "inference_kv_cache_bytes" in metrics
    assert json.loads(json.dumps(details))  # plain JSON
