"""The protocol as every engine must speak it, over a real socket: messages, streaming, images, adapters per
connection and per request without cross-talk, cancel, stop strings, seeds, errors, status, HTTP endpoints.

Runs once per engine (``targets.ENGINES``); a test sees only the worker's URL and the settings in ``Target``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import Client, copy_adapter, edit_config, greedy, image_b64, image_message, png_bomb


def http(target, path):
    try:
        with urllib.request.urlopen(target.http + path, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def outcomes(target):
    """inference_requests_total by outcome, from /metrics."""
    _, _, text = http(target, "/metrics")
    return {sample.labels["outcome"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "inference_requests_total"}


def loaded_adapters(client):
    """The worker's loaded adapters as (path, digest) pairs, from status."""
    status = client.request({"type": "status"}, "status")
    return {(e["adapter_path"], e["digest"]) for e in status["loaded_adapters"]}

COMPAT = {
    "type": "generate",
    "messages": [{"role": "user", "content": "Привет!"}],
    "session_id": "unique-session-id",
    "system_prompt": "Ты полезный ассистент",
    "max_tokens": 32,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
}


def test_ping_pong(target):
    """ping → pong."""
    with Client(target.url) as c:
        assert c.request({"type": "ping"}, "pong") == {"type": "pong"}


def test_seed_client_flow_message_for_message(target):
    """The documented flow of the existing clients works unchanged: load, generate (tokens, done), unload."""
    with Client(target.url) as c:
        loaded = c.load("demo-a")
        assert loaded["type"] == "adapter_loaded" and loaded["adapter_path"] == "demo-a"
        c.send(COMPAT)
        stream = c.collect("unique-session-id")
        assert stream.tokens, "tokens are streamed before done"
        assert all(t["session_id"] == "unique-session-id" and t["content"] for t in stream.tokens)
        done = stream.terminal
        assert done["type"] == "done" and done["session_id"] == "unique-session-id"
        assert done["content"] == stream.text
        assert done["adapter"] == "demo-a" and done["finish_reason"] in ("stop", "length")
        assert done["usage"]["completion_tokens"] >= 1 and done["usage"]["prompt_tokens"] > 0
        assert done["timings"]["total_ms"] >= done["timings"]["ttft_ms"] > 0
        assert c.load(None) == {"type": "adapter_unloaded"}


def test_image_and_text_stream(target):
    """An image part plus text streams tokens whose concatenation is done.content."""
    with Client(target.url) as c:
        stream = c.generate(messages=image_message(image_b64((500, 300))), max_tokens=40, temperature=0)
        assert stream.terminal["type"] == "done", stream.terminal
        assert stream.text == stream.terminal["content"] and stream.tokens
        text_only = c.generate(**greedy("Describe this diagram.", 40))
        assert stream.terminal["usage"]["prompt_tokens"] > text_only.terminal["usage"]["prompt_tokens"] + 20


def test_data_url_and_history(target):
    """data: URLs, system messages and multi-turn history are accepted."""
    with Client(target.url) as c:
        messages = [
            {"role": "system", "content": "You read diagrams."},
            {"role": "user", "content": [{"type": "image", "image": "data:image/jpeg;base64," + image_b64(fmt="JPEG")},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "A flowchart."},
            {"role": "user", "content": "List the steps."},
        ]
        assert c.generate(messages=messages, max_tokens=8, temperature=0).terminal["type"] == "done"


def test_greedy_is_deterministic_and_seeds_reproduce(target):
    """temperature 0 repeats exactly; the same seed repeats a sampled output."""
    with Client(target.url) as c:
        a = c.generate(**greedy(max_tokens=40)).terminal
        b = c.generate(**greedy(max_tokens=40)).terminal
        assert a["content"] == b["content"] and a["content"]
        assert a.get("seed") is None
        sampled = dict(messages=greedy()["messages"], max_tokens=40, temperature=1.0, top_k=0, top_p=1.0)
        s1 = c.generate(**sampled, seed=1234).terminal
        s2 = c.generate(**sampled, seed=1234).terminal
        assert s1["content"] == s2["content"] and s1["seed"] == 1234
        others = {c.generate(**sampled, seed=seed).terminal["content"] for seed in (1, 2, 3)}
        assert len(others | {s1["content"]}) > 1, "different seeds should give different samples"


def test_adapters_change_output_and_unload_restores_base_exactly(target):
    """demo-a, demo-b and the base give three different greedy outputs; after unload the base is bit-identical."""
    with Client(target.url) as c:
        req = greedy(max_tokens=48)
        base = c.generate(**req).terminal["content"]
        c.load("demo-a")
        a = c.generate(**req).terminal
        c.load("demo-b")
        b = c.generate(**req).terminal
        assert a["adapter"] == "demo-a" and b["adapter"] == "demo-b"
        assert len({base, a["content"], b["content"]}) == 3
        assert c.load(None)["type"] == "adapter_unloaded"
        assert c.generate(**req).terminal["content"] == base
        c.load("demo-a")
        assert c.generate(**req).terminal["content"] == a["content"], "reloading is exact too"


def test_per_request_adapter_does_not_change_the_connection(target):
    """generate.adapter applies to that request only; null means the base for that request."""
    with Client(target.url) as c:
        req = greedy(max_tokens=32)
        base = c.generate(**req).terminal["content"]
        c.load("demo-a")
        a = c.generate(**req).terminal["content"]
        b = c.generate(**req, adapter="demo-b").terminal
        assert b["adapter"] == "demo-b" and b["content"] not in (a, base)
        explicit_base = c.generate(**req, adapter=None).terminal
        assert explicit_base["adapter"] is None and explicit_base["content"] == base
        assert c.generate(**req).terminal["content"] == a


def test_concurrent_connections_with_different_adapters_match_solo_runs(target):
    """Three connections (demo-a, demo-b, base) generating at once give exactly their solo outputs."""
    req = greedy("Explain the swimlanes and the gateways.", max_tokens=96)
    solo = {}
    for adapter in ("demo-a", "demo-b", None):
        with Client(target.url) as c:
            c.load(adapter)
            solo[adapter] = c.generate(**req).terminal["content"]
    results: dict[object, list[str]] = {}

    def run(adapter):
        with Client(target.url) as c:
            c.load(adapter)
            results[adapter] = [c.generate(**req).terminal["content"] for _ in range(3)]

    threads = [threading.Thread(target=run, args=(a,)) for a in ("demo-a", "demo-b", None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for adapter, outs in results.items():
        assert outs == [solo[adapter]] * 3, f"cross-talk on {adapter}"
    assert len(results) == 3


def test_several_generations_on_one_connection(target):
    """One connection runs generations concurrently, told apart by session_id; ids are assigned when absent."""
    with Client(target.url) as c:
        for sid in ("one", "two"):
            c.send({"type": "generate", "session_id": sid, **greedy(max_tokens=30)})
        c.send({"type": "generate", **greedy(max_tokens=10)})
        terminals = {}
        while len(terminals) < 3:
            m = c.recv()
            if m["type"] in ("done", "error"):
                terminals[m["session_id"]] = m
        assert {"one", "two"} <= set(terminals)
        assigned = (set(terminals) - {"one", "two"}).pop()
        assert len(assigned) >= 16
        assert terminals["one"]["content"] == terminals["two"]["content"]


def test_cancel_stops_a_generation(target):
    """cancel ends the stream with done(finish_reason=cancelled) long before max_tokens."""
    with Client(target.url) as c:
        c.send({"type": "generate", "session_id": "long", **greedy(max_tokens=target.max_new_tokens)})
        first = c.recv()
        assert first["type"] == "token"
        c.send({"type": "cancel", "session_id": "long"})
        stream = c.collect("long")
        done = stream.terminal
        assert done["type"] == "done" and done["finish_reason"] == "cancelled"
        assert done["usage"]["completion_tokens"] < target.max_new_tokens
        assert done["content"] == first["content"] + stream.text
        assert c.request({"type": "ping"}, "pong")["type"] == "pong"


def test_cancel_of_unknown_session_is_an_error(target):
    """Cancelling a session that is not running is unknown_session; the connection stays usable."""
    with Client(target.url) as c:
        err = c.request({"type": "cancel", "session_id": "ghost"}, "error")
        assert err["code"] == "unknown_session" and err["session_id"] == "ghost"
        assert c.request({"type": "ping"}, "pong")["type"] == "pong"


def test_every_reply_echoes_the_request_id_of_the_message_it_answers(target):
    """request_id is echoed on every reply to a message that had one (tokens, progress and errors too), never else."""
    with Client(target.url) as c:
        assert c.request({"type": "ping", "request_id": "p1"}, "pong") == {"type": "pong", "request_id": "p1"}
        assert c.request({"type": "status", "request_id": "s1"}, "status")["request_id"] == "s1"
        assert c.request({"type": "list_adapters", "request_id": "l1"}, "adapters")["request_id"] == "l1"
        c.send({"type": "load_adapter", "adapter_path": "demo-a", "request_id": "a1"})
        loading = c.until("adapter_loaded", "error")
        assert loading[-1]["type"] == "adapter_loaded" and all(m["request_id"] == "a1" for m in loading)
        missing = c.request({"type": "load_adapter", "adapter_path": "no-such", "request_id": "a2"}, "error")
        assert missing["code"] == "adapter_not_found" and missing["request_id"] == "a2"
        assert c.request({"type": "load_adapter", "adapter_path": None, "request_id": "a3"}, "adapter_unloaded") == {
            "type": "adapter_unloaded", "request_id": "a3"}
        stream = c.generate(session_id="g1", request_id="r1", **greedy(max_tokens=8))
        assert stream.tokens and all(t["request_id"] == "r1" for t in stream.tokens)
        assert stream.terminal["type"] == "done" and stream.terminal["request_id"] == "r1"
        gone = c.request({"type": "cancel", "session_id": "ghost", "request_id": "c1"}, "error")
        assert gone["code"] == "unknown_session" and gone["request_id"] == "c1"
        refused = c.request({"type": "generate", "messages": [], "request_id": "r2"}, "error")
        assert refused["code"] == "invalid_message" and refused["request_id"] == "r2"
        unknown = c.request({"type": "teleport", "request_id": "t1"}, "error")
        assert unknown["code"] == "unknown_type" and unknown["request_id"] == "t1"
        plain = c.generate(session_id="g2", **greedy(max_tokens=4))
        assert "request_id" not in plain.terminal and all("request_id" not in t for t in plain.tokens)


def test_duplicate_session_id_is_refused(target):
    """A second generate with a running session_id gets duplicate_session; the first one still ends with its done."""
    with Client(target.url) as c:
        c.send({"type": "generate", "session_id": "dup", **greedy(max_tokens=target.max_new_tokens)})
        c.send({"type": "generate", "session_id": "dup", **greedy(max_tokens=5)})
        terminals = []
        while len(terminals) < 2:
            m = c.recv()
            if m["type"] in ("done", "error"):
                terminals.append(m)
                if len(terminals) == 1:
                    c.send({"type": "cancel", "session_id": "dup"})  # the first one need not run to the end
        assert terminals[0]["type"] == "error" and terminals[0]["code"] == "duplicate_session"
        assert terminals[1]["type"] == "done" and terminals[1]["session_id"] == "dup"


def test_disconnect_cancels_running_generations(target):
    """A client that disconnects mid-stream cancels its generations; nothing keeps running."""
    before = outcomes(target)
    c = Client(target.url)
    c.send({"type": "generate", **greedy(max_tokens=target.max_new_tokens)})
    assert c.recv()["type"] == "token"
    c.close()
    deadline = time.monotonic() + 10
    with Client(target.url) as watcher:
        while time.monotonic() < deadline:
            status = watcher.request({"type": "status"}, "status")
            if status["running"] == 0 and status["queued"] == 0 and status["connections"] == 1:
                break
            time.sleep(0.05)
    assert status["running"] == 0 and status["queued"] == 0 and status["connections"] == 1, status
    after = outcomes(target)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert changed.get("cancelled") == 1, f"outcomes counted meanwhile: {changed}"


def test_stop_strings_end_the_output(target):
    """A stop string ends generation with finish_reason stop and is not part of the content."""
    with Client(target.url) as c:
        full = c.generate(**greedy(max_tokens=60)).terminal["content"]
        words = full.split()
        assert len(words) > 3
        stop = words[2]
        done = c.generate(**greedy(max_tokens=60), stop=[stop]).terminal
        assert done["finish_reason"] == "stop"
        assert done["content"] == full[: full.index(stop)]


def test_max_tokens_is_capped(target):
    """max_tokens above MAX_NEW_TOKENS is capped (and reported in usage.max_tokens). The generation is cancelled after
    its first token: the cap is in every done, and running it out takes vLLM minutes at 16000 tokens."""
    with Client(target.url) as c:
        c.send({"type": "generate", "session_id": "capped", **greedy(max_tokens=10**6)})
        assert c.recv()["type"] == "token"
        c.send({"type": "cancel", "session_id": "capped"})
        done = c.collect("capped").terminal
        assert done["type"] == "done", done
        assert done["usage"]["max_tokens"] == target.max_new_tokens


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "invalid_json"),
        ("[]", "invalid_message"),
        (b"\x00\x01", "unsupported_frame"),
        ('{"type": "warp"}', "unknown_type"),
        ('{"type": "generate", "messages": [], "extra": 1}', "invalid_message"),
        ('{"type": "generate", "messages": [{"role": "user", "content": "x"}], "top_p": 3}', "invalid_message"),
        ('{"type": "generate", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', "invalid_message"),
        ('{"type": "generate", "messages": [{"role": "user", "content": "' + "x" * 200_000 + '"}]}', None),
    ],
)
def test_bad_messages_get_errors_and_the_connection_stays_usable(target, frame, code):
    """Every malformed frame gets an error with its code; ping still works afterwards."""
    with Client(target.url) as c:
        c.send(frame)
        reply = c.until("error", "done", timeout=120)[-1]
        if code is None:  # a huge (but allowed) prompt: prompt_too_long or done, never a crash
            assert reply["type"] == "done" or reply["code"] == "prompt_too_long"
        else:
            assert reply["type"] == "error" and reply["code"] == code and reply["retryable"] is False
        assert c.request({"type": "ping"}, "pong")["type"] == "pong"


@pytest.mark.parametrize(
    ("image", "code"),
    [
        ("@@@not-base64@@@", "invalid_image"),
        (image_b64(fmt="GIF"), "unsupported_image"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "unsupported_image"),
        (__import__("base64").b64encode(png_bomb()).decode(), "image_too_large"),
    ],
)
def test_bad_images_are_refused_with_their_code(target, image, code):
    """Broken, unsupported and bomb images are refused; the generate ends with exactly that error."""
    with Client(target.url) as c:
        stream = c.generate(messages=image_message(image), session_id="img", max_tokens=5)
        assert not stream.tokens
        assert stream.terminal["type"] == "error" and stream.terminal["code"] == code
        assert stream.terminal["session_id"] == "img"


def test_system_prompt_twice_is_refused(target):
    """system_prompt together with a leading system message is ambiguous: invalid_message."""
    with Client(target.url) as c:
        err = c.generate(messages=[{"role": "system", "content": "a"}, {"role": "user", "content": "b"}],
                         system_prompt="c").terminal
        assert err["code"] == "invalid_message"


def test_adapter_errors_have_their_own_codes_and_change_nothing(target, demo, adapter_root):
    """Not found, forbidden, invalid and incompatible adapters are refused; outputs stay exactly the same."""
    broken = copy_adapter(demo.store_dir / "demo-a", adapter_root / "corrupt")
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    pickled = copy_adapter(demo.store_dir / "demo-a", adapter_root / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    wrong_targets = edit_config(copy_adapter(demo.store_dir / "demo-a", adapter_root / "targets"),
                                target_modules=["no_such_module"])
    with Client(target.url) as c:
        req = greedy(max_tokens=32)
        c.load("demo-a")
        before_a = c.generate(**req).terminal["content"]
        before_base = c.generate(**req, adapter=None).terminal["content"]
        loaded_before = loaded_adapters(c)
        cases = {
            "no-such-adapter": "adapter_not_found",
            "../../etc": "adapter_forbidden",
            "/etc": "adapter_forbidden",
            "https://example.com/x": "adapter_forbidden",
            "s3://adapters/x": "adapter_forbidden",
            str(adapter_root / "missing"): "adapter_not_found",
            str(broken): "adapter_invalid",
            str(pickled): "adapter_invalid",
            str(wrong_targets): "adapter_incompatible",
        }
        for ref, code in cases.items():
            err = c.load(ref)
            assert err["type"] == "error" and err["code"] == code, (ref, err)
            assert err["adapter_path"] == ref and err["message"]
        assert loaded_adapters(c) == loaded_before
        assert c.generate(**req).terminal["content"] == before_a, "the connection keeps its adapter"
        assert c.generate(**req, adapter=None).terminal["content"] == before_base
        err = c.generate(**req, adapter="no-such-adapter", session_id="x").terminal
        assert err["code"] == "adapter_not_found" and err["session_id"] == "x"


def test_adapter_from_another_architecture_is_refused(target, adapter_root, tmp_path_factory):
    """A text-only Qwen3 adapter (keys model.layers.*) would silently do nothing: adapter_incompatible."""
    from checkpoints.build import build_lora_adapter, build_text_checkpoint

    text_model = build_text_checkpoint(tmp_path_factory.mktemp("text-model"))
    foreign = build_lora_adapter(text_model, adapter_root / "foreign", seed=9)
    with Client(target.url) as c:
        err = c.load(str(foreign))
        assert err["code"] == "adapter_incompatible" and "another architecture" in err["message"]


def test_local_adapter_by_path_and_vision_tower_lora(target, demo, adapter_root):
    """An adapter under ADAPTER_LOCAL_ROOTS loads by absolute path; all-linear LoRA (vision tower too) works where the
    engine supports it, and is otherwise refused as incompatible, changing nothing."""
    from checkpoints.build import build_lora_adapter

    path = build_lora_adapter(demo.model_dir, adapter_root / "all-linear", seed=11, target_modules="all-linear")
    with Client(target.url) as c:
        base = c.generate(messages=image_message(image_b64()), max_tokens=24, temperature=0).terminal["content"]
        loaded_before = loaded_adapters(c)
        loaded = c.load(str(path))
        if not target.vision_adapters:
            assert loaded["type"] == "error" and loaded["code"] == "adapter_incompatible", loaded
            assert "vision" in loaded["message"] and loaded_adapters(c) == loaded_before
            out = c.generate(messages=image_message(image_b64()), max_tokens=24, temperature=0).terminal
            assert out["adapter"] is None and out["content"] == base
            return
        assert loaded["type"] == "adapter_loaded" and any("fc" in t or "qkv" in t for t in loaded["target_modules"])
        out = c.generate(messages=image_message(image_b64()), max_tokens=24, temperature=0).terminal
        assert out["type"] == "done" and out["content"] != base


def test_status_reports_model_adapters_and_queue(target):
    """status: model, device, dtype, loaded adapters with their users, queue depth and limits."""
    with Client(target.url) as a, Client(target.url) as b:
        a.load("demo-a")
        b.load("demo-a")
        status = a.request({"type": "status"}, "status")
        assert status["ready"] and status["vision"] and status["device"] == "cpu" and status["dtype"] == "float32"
        entry = next(x for x in status["loaded_adapters"] if x["adapter_path"] == "demo-a")
        assert entry["connections"] >= 2 and entry["running"] == 0 and entry["rank"] == 8
        assert status["queued"] == 0 and status["max_queue"] == target.max_queue_size
        assert status["limits"]["max_new_tokens"] == target.max_new_tokens


def test_list_adapters(target):
    """list_adapters shows the store's adapters with manifest facts and whether each is loaded."""
    with Client(target.url) as c:
        c.load("demo-b")
        items = {x["name"]: x for x in c.request({"type": "list_adapters"}, "adapters")["items"]}
        assert {"demo-a", "demo-b"} <= set(items)
        assert items["demo-b"]["loaded"] is True and items["demo-b"]["rank"] == 8
        assert len(items["demo-b"]["digest"]) == 64 and items["demo-b"]["size"] > 0


def test_health_ready_metrics(target):
    """/health and /ready are JSON; /metrics is Prometheus text with the worker's instruments."""
    with Client(target.url) as c:
        c.generate(**greedy(max_tokens=5))
    status, ctype, body = http(target, "/health")
    health = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert health["status"] == "ok" and health["device"] == "cpu" and health["model_load_seconds"] > 0
    status, _, body = http(target, "/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    status, ctype, metrics = http(target, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("inference_requests_total", "inference_time_to_first_token_seconds_bucket",
                 "inference_inter_token_latency_seconds_bucket", "inference_generated_tokens_total",
                 "inference_queue_depth", "inference_running_generations", "inference_adapter_loads_total",
                 "inference_adapter_load_seconds_bucket", "inference_model_load_seconds", "inference_connections"):
        assert name in metrics, name
    assert http(target, "/nope")[0] == 404


def test_refused_generate_is_answered_under_its_session_id(target):
    """A malformed generate with a usable session_id gets its error under that session_id (its terminal)."""
    with Client(target.url) as c:
        err = c.request({"type": "generate", "session_id": "bad-1", **greedy(), "top_p": 0}, "error")
        assert err["code"] == "invalid_message" and err["session_id"] == "bad-1"
        err = c.request({"type": "generate", "session_id": "", "messages": []}, "error")
        assert "session_id" not in err
