"""A text-only causal LM (like the older worker's Qwen3-0.6B) loads and serves text; images get a clear error."""

from __future__ import annotations

import pytest

from inference_worker.demo import build_text_checkpoint
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
