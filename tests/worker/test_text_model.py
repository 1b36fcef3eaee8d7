"""A text-only causal LM (like the older worker's Qwen3-0.6B) loads and serves text; images get a clear error."""

from __future__ import annotations

import pytest

from checkpoints.build import build_text_checkpoint
from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, greedy, image_b64, image_message


@pytest.fixture(scope="module")
def text_worker(demo, adapter_root, tmp_path_factory):
    model = build_text_checkpoint(tmp_path_factory.mktemp("text-model"))
    with EmbeddedWorker(worker_settings(demo, adapter_root, model_name=str(model))) as w:
        yield w


def test_text_model_streams(text_worker):
    """Text messages stream tokens and end with done; status says it has no vision."""
    with Client(text_worker.url) as c:
        stream = c.generate(**greedy(max_tokens=30), system_prompt="Be brief.")
        assert stream.terminal["type"] == "done" and stream.text == stream.terminal["content"]
        status = c.request({"type": "status"}, "status")
        assert status["vision"] is False and status["model_type"] == "qwen3"


def test_image_to_text_model_is_refused(text_worker):
    """An image sent to a text-only model is images_not_supported, before decoding it."""
    with Client(text_worker.url) as c:
        err = c.generate(messages=image_message(image_b64()), session_id="i").terminal
        assert err["code"] == "images_not_supported" and err["session_id"] == "i"


def test_vl_adapter_on_text_model_is_incompatible(text_worker):
    """An adapter trained for Qwen3-VL does not fit the text model: adapter_incompatible."""
    with Client(text_worker.url) as c:
        assert c.load("demo-a")["code"] == "adapter_incompatible"


def test_text_model_batches_exactly(text_worker):
    """Several connections at once on the text-only model each get exactly their solo output."""
    prompts = ["Hi", "Describe the process in detail, step by step.", "Что дальше?", "List the roles."]
    with Client(text_worker.url) as c:
        solo = [c.generate(**greedy(p, max_tokens=40)).terminal["content"] for p in prompts]
    assert len(set(solo)) == len(solo)
    clients = [Client(text_worker.url) for _ in prompts]
    try:
        for c, p in zip(clients, prompts):
            c.send({"type": "generate", **greedy(p, max_tokens=40)})
        assert [c.collect().terminal["content"] for c in clients] == solo
    finally:
        for c in clients:
            c.close()
