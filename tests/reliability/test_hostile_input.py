"""Hostile input over the socket: huge strings and images refused cheaply, forbidden references never reach a
store, broken adapters leave no trace."""

from __future__ import annotations

import base64
import gc
import json
import os
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, copy_adapter, edit_config, greedy, image_b64, image_message, png_bomb


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


@pytest.fixture(scope="module")
def big_frames(demo, adapter_root):
    """A worker that accepts 40 MiB frames, so huge-but-legal payloads reach the image and prompt checks."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_message_bytes=40 * 2**20)) as w:
        yield w


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "x" * 1_000_000), ("session_id", "s" * 1_000_000), ("adapter", "a" * 1_000_000),
     ("stop", ["x" * 100_000]), ("temperature", 1e308), ("max_tokens", -(10**30)), ("seed", 2**64)],
)
def test_huge_and_absurd_fields_are_refused(big_frames, field, value):
    """Megabyte strings and absurd numbers in fields get an error with its code; the connection stays usable."""
    with Client(big_frames.url) as c:
        c.send({"type": "generate", **greedy(max_tokens=4), field: value})
        reply = c.until("error", "done")[-1]
        assert reply["type"] == "error" and reply["code"] in ("invalid_message", "unknown_type")
        assert len(reply["message"]) < 2000, "errors do not echo megabytes back"
        assert c.request({"type": "ping"}, "pong")["type"] == "pong"


def test_huge_prompt_is_refused_without_tokenizing(big_frames):
    """A 30 MB prompt is prompt_too_long straight away (no tokenizer pass over it)."""
    import time

    with Client(big_frames.url) as c:
        started = time.monotonic()
        err = c.generate(messages=[{"role": "user", "content": "word " * 6_000_000}], max_tokens=4).terminal
        assert err["code"] == "prompt_too_long"
        assert time.monotonic() - started < 10


def test_image_bombs_and_huge_data_urls_keep_memory_flat(big_frames):
    """Decompression bombs and a 30 MB data URL are refused before decoding pixels; RSS does not grow, even with the
    cyclic garbage collector off (a refused request left in a reference cycle would hold its 30 MB until a
    collection happens to run)."""
    bomb = base64.b64encode(png_bomb(60_000, 60_000)).decode()  # would be 10.8 GB of RGB pixels
    huge = "data:image/png;base64," + "A" * (30 * 2**20)
    with Client(big_frames.url) as c:
        assert c.generate(messages=image_message(bomb), max_tokens=4).terminal["code"] == "image_too_large"
        assert c.generate(messages=image_message(huge), max_tokens=4).terminal["code"] == "image_too_large"
        before = rss_mb()  # after one of each: the frame buffers of a 30 MB message are allocated once
        gc.disable()
        try:
            for _ in range(4):
                assert c.generate(messages=image_message(bomb), max_tokens=4).terminal["code"] == "image_too_large"
                assert c.generate(messages=image_message(huge), max_tokens=4).terminal["code"] == "image_too_large"
            grown = rss_mb() - before
        finally:
            gc.enable()
        assert grown < 100, "refusing images must not allocate their pixels, nor keep the refused requests"
        assert c.generate(messages=image_message(image_b64()), max_tokens=4).terminal["type"] == "done"


class CountingStore:
    """Wraps a store and counts every call made to it."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[str] = []
        self.kind = inner.kind

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if callable(attr):
            def counted(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)
            return counted
        return attr


@pytest.mark.parametrize(
    "ref",
    ["..", "../demo-a", "../../etc/passwd", "/etc", "/tmp", "demo-a/../../x", "file:///etc/passwd",
     "http://169.254.169.254/latest", "ftp://x/y", "s3://adapters/demo-a", "-rf", ".hidden", "a" * 129,
     "name with spaces", "demo-a\x00"],
)
def test_forbidden_references_make_zero_store_calls(worker, ref, tmp_path):
    """Traversal, outside paths, other schemes, s3 without a store, bad names: adapter_forbidden, no store call."""
    sources = worker.service.sources
    counting = CountingStore(sources.store)
    sources.store = counting
    try:
        with Client(worker.url) as c:
            err = c.load(ref)
        assert err["type"] == "error" and err["code"] == "adapter_forbidden", err
        assert counting.calls == []
    finally:
        sources.store = counting.inner


def test_symlink_out_of_a_root_is_forbidden(worker, adapter_root, tmp_path_factory, demo):
    """A symlink inside ADAPTER_LOCAL_ROOTS that points outside it is refused, even to a valid adapter."""
    outside = copy_adapter(demo.store_dir / "demo-a", tmp_path_factory.mktemp("outside") / "adapter")
    link = adapter_root / "sneaky"
    if not link.exists():
        os.symlink(outside, link)
    with Client(worker.url) as c:
        assert c.load(str(link))["code"] == "adapter_forbidden"


def reshape_adapter(src, dst, in_features: int):
    """The same adapter with every lora_A resized to in_features (an adapter for a model of another size)."""
    copy_adapter(src, dst)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    resized = {k: (torch.randn(v.shape[0], in_features) if ".lora_A." in k else v) for k, v in tensors.items()}
    save_file(resized, str(dst / "adapter_model.safetensors"))
    return dst


def test_broken_adapters_leave_no_trace(worker, demo, adapter_root):
    """Every kind of broken adapter gets its own code; base and loaded adapters keep exactly their outputs."""
    other_size = reshape_adapter(demo.store_dir / "demo-a", adapter_root / "other-size", in_features=32)
    wrong_rank = edit_config(copy_adapter(demo.store_dir / "demo-a", adapter_root / "wrong-rank"), r=4)
    with Client(worker.url) as c:
        c.load("demo-b")
        req = greedy(max_tokens=40)
        outputs = {k: c.generate(**req, adapter=k).terminal["content"] for k in ("demo-a", "demo-b", None)}
        bank = worker.service.engine.bank
        names_before, hooked_before = set(bank.adapters), bank.hooked_modules()
        params_before = sum(p.numel() for p in worker.service.engine.lm.model.parameters())
        for ref, code in [(str(other_size), "adapter_incompatible"), (str(wrong_rank), "adapter_invalid")]:
            err = c.load(ref)
            assert err["code"] == code, err
        assert set(bank.adapters) == names_before and bank.hooked_modules() == hooked_before
        assert sum(p.numel() for p in worker.service.engine.lm.model.parameters()) == params_before
        for k, expected in outputs.items():
            assert c.generate(**req, adapter=k).terminal["content"] == expected
        assert c.generate(**req).terminal["content"] == outputs["demo-b"]


def test_eviction_while_streaming_releases_memory_afterwards(demo, adapter_root):
    """The running stream finishes on its adapter; its LoRA weights leave the model when the stream ends."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_loaded_adapters=1)) as w:
        bank = w.service.engine.bank
        with Client(w.url) as a, Client(w.url) as b:
            a.load("demo-a")
            solo = a.generate(**greedy(max_tokens=300)).terminal["content"]
            name_a = next(iter(bank.adapters))
            assert bank.adapters[name_a].parameter_bytes > 0 and bank.hooked_modules()
            a.send({"type": "generate", "session_id": "s", **greedy(max_tokens=300)})
            assert a.recv()["type"] == "token"
            b.load("demo-b")
            assert name_a in bank.adapters, "not evicted while streaming"
            assert a.collect("s").terminal["content"] == solo
            deadline = time.monotonic() + 5
            while name_a in bank.adapters and time.monotonic() < deadline:
                time.sleep(0.01)
            assert name_a not in bank.adapters and set(bank.adapters) == {next(iter(bank.adapters))}


def test_every_reply_of_a_bad_session_is_valid_json(worker):
    """Replies to garbage are well-formed JSON objects with type error (checked by the strict client too)."""
    with Client(worker.url) as c:
        for frame in ("\x00", "{}", '{"type": null}', "nul", json.dumps({"type": "generate", "messages": "x"})):
            c.send(frame)
            reply = c.recv()
            assert reply["type"] == "error" and reply["code"] in ("invalid_json", "invalid_message")


@pytest.mark.parametrize("fields", [{"temperature": 1e-40}, {"temperature": 1e-300}, {"temperature": 5e-324},
                                    {"temperature": 0.7, "repetition_penalty": 1e-300},
                                    {"temperature": 0, "repetition_penalty": 5e-324},
                                    {"temperature": 5.0, "top_p": 1e-300, "top_k": 1}])
def test_every_accepted_sampling_value_works(worker, fields):
    """Extreme values inside the accepted ranges sample (no internal_error from NaN probabilities)."""
    with Client(worker.url) as c:
        stream = c.generate(**{**greedy(max_tokens=8), **fields, "seed": 3})
        assert stream.terminal["type"] == "done", stream.terminal
        assert stream.terminal["usage"]["completion_tokens"] == 8
        if fields.get("temperature", 0) < 1e-30 and "repetition_penalty" not in fields:
            assert stream.text == c.generate(**greedy(max_tokens=8)).text, "a vanishing temperature is greedy"
