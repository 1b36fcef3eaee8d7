"""The OpenAI-compatible API, driven by the official ``openai`` SDK against a real embedded demo worker.

The demo model's text is meaningless, but greedy decoding (temperature 0) is deterministic: the same request gives
the same text, streamed or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import image_b64

PROMPT = [{"role": "user", "content": "Describe the process diagram."}]
LONG = 2048  # MAX_NEW_TOKENS: a generation that cannot end while a test still looks at it


def client_for(w: EmbeddedWorker, api_key: str = "unused") -> OpenAI:
    return OpenAI(base_url=w.api + "/v1", api_key=api_key, max_retries=0, timeout=60)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def idle(w: EmbeddedWorker) -> bool:
    return w.service.admission.admitted == 0 and w.service.engine.status().running == 0


def requests_ended(w: EmbeddedWorker, outcome: str) -> float:
    """inference_requests_total{outcome=...}: requests that ended so (stop, length, cancelled, an error code)."""
    value = w.service.metrics.registry.get_sample_value("inference_requests_total", {"outcome": outcome})
    return value or 0.0


def loaded_refs(w: EmbeddedWorker) -> set[str]:
    return {entry.ref for entry in w.service.registry.loaded.values()}


def text_of(chunks: list[Any], index: int = 0) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


@pytest.fixture(scope="module")
def client(worker: EmbeddedWorker) -> Iterator[OpenAI]:
    with client_for(worker) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def base(client: OpenAI) -> str:
    """The base model's id, as /v1/models gives it (the one entry without a parent)."""
    bases = [m.id for m in client.models.list() if m.model_dump().get("parent") is None]
    assert len(bases) == 1, bases
    return bases[0]


@pytest.fixture(scope="module")
def greedy_text(client: OpenAI, base: str) -> str:
    """The base model's greedy answer to PROMPT in 8 tokens (not streamed)."""
    reply = client.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=8)
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def strict(demo, adapter_root) -> Iterator[EmbeddedWorker]:
    """A worker with a token and room for one request only (one batch row, no queue)."""
    settings = worker_settings(demo, adapter_root, max_batch_rows=1, max_queue_size=0, auth_token="s3cret")
    with EmbeddedWorker(settings) as running:
        yield running


# ---- completions -----------------------------------------------------------------------------------------------------
def test_chat_completion_not_streamed(client: OpenAI, base: str, greedy_text: str) -> None:
    """A greedy completion of the base model: one choice, stopped by max_tokens, usage counts that add up."""
    reply = client.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=8)
    assert reply.object == "chat.completion" and reply.model == base and reply.id.startswith("chatcmpl-")
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.message.content == greedy_text, "greedy decoding is deterministic"
    usage = reply.usage
    assert usage is not None and usage.completion_tokens == 8 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_completion_matches_the_unstreamed_one(client: OpenAI, base: str, greedy_text: str) -> None:
    """Streamed with include_usage: the deltas make the non-streamed greedy text, the choice ends with "length",
    and the last chunk carries the usage and no choice."""
    stream = client.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == base for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert text_of(chunks) == greedy_text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + 8
    assert all(c.usage is None for c in chunks[:-1])


async def test_streamed_completion_async(worker: EmbeddedWorker, base: str, greedy_text: str) -> None:
    """The async client streams the same greedy text, and the usage last."""
    async with AsyncOpenAI(base_url=worker.api + "/v1", api_key="unused", max_retries=0, timeout=60) as sdk:
        stream = await sdk.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=8,
                                                   stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert text_of(chunks) == greedy_text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


# ---- images ----------------------------------------------------------------------------------------------------------
def test_image_as_data_url(client: OpenAI, base: str) -> None:
    """An image_url part with a data: URL reaches the model: the prompt grows by the image's tokens."""
    text = "Describe this diagram."
    plain = client.chat.completions.create(model=base, messages=[{"role": "user", "content": text}],
                                           temperature=0, max_tokens=4)
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64()}"}},
               {"type": "text", "text": text}]
    reply = client.chat.completions.create(model=base, messages=[{"role": "user", "content": content}],
                                           temperature=0, max_tokens=4)
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content
    assert reply.usage is not None and plain.usage is not None
    assert reply.usage.completion_tokens == 4
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens + 4, "the image's tokens are in the prompt"


def test_image_url_is_not_fetched(client: OpenAI, base: str) -> None:
    """An https:// image URL is refused (the worker fetches nothing) with a 400 that names the part at fault."""
    content = [{"type": "text", "text": "Describe this."},
               {"type": "image_url", "image_url": {"url": "https://example.com/diagram.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=base, messages=[{"role": "user", "content": content}], max_tokens=4)
    assert caught.value.param == "messages[0].content[1].image_url.url"
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == caught.value.param
    assert "data:" in caught.value.body["message"]


# ---- models and adapters ---------------------------------------------------------------------------------------------
def test_adapter_as_model(worker: EmbeddedWorker, client: OpenAI, base: str) -> None:
    """model="demo-a" runs the adapter: it is loaded, and its greedy text differs from the base model's."""
    def answer(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=16)
        assert reply.model == model and reply.choices[0].finish_reason == "length"
        return reply.choices[0].message.content or ""

    adapted = answer("demo-a")
    assert "demo-a" in loaded_refs(worker)
    assert adapted != answer(base)
    assert adapted == answer("demo-a"), "greedy decoding with the adapter is deterministic"


def test_models_list(client: OpenAI, base: str) -> None:
    """/v1/models lists the base model (no parent) and the store's adapters, each with the base as parent."""
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert {base, "demo-a", "demo-b"} <= set(models)
    assert models[base]["parent"] is None and models[base]["object"] == "model"
    for name in ("demo-a", "demo-b"):
        assert models[name]["parent"] == base and models[name]["root"] == name


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    """A model that is neither the base nor an adapter is a 404 that says so, streamed or not (a streamed request
    gets the status, not a 200 and an error event)."""
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=4, stream=stream)
        assert "no-such-model" in caught.value.message
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "adapter_not_found"


# ---- several choices -------------------------------------------------------------------------------------------------
def test_two_choices(client: OpenAI, base: str) -> None:
    """n=2 (sampled, seeded): two choices with indexes 0 and 1; the usage counts both."""
    reply = client.chat.completions.create(model=base, messages=PROMPT, n=2, temperature=0.7, seed=7, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason == "length" and c.message.content for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    again = client.chat.completions.create(model=base, messages=PROMPT, n=2, temperature=0.7, seed=7, max_tokens=6)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices], \
        "the same seed samples the same choices"


def test_two_choices_streamed(client: OpenAI, base: str) -> None:
    """Streamed with n=2: chunks of both indexes, each index's last chunk with a finish_reason (its only one)."""
    stream = client.chat.completions.create(model=base, messages=PROMPT, n=2, temperature=0.7, seed=7, max_tokens=6,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    by_index: dict[int, list[Any]] = {}
    for c in chunks:
        for choice in c.choices:
            by_index.setdefault(choice.index, []).append(choice)
    assert sorted(by_index) == [0, 1]
    for choices in by_index.values():
        assert choices[0].delta.role == "assistant"
        assert choices[-1].finish_reason == "length"
        assert all(choice.finish_reason is None for choice in choices[:-1])
        assert "".join(choice.delta.content or "" for choice in choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


# ---- refusals --------------------------------------------------------------------------------------------------------
def test_unsupported_parameter_is_refused(client: OpenAI, base: str) -> None:
    """logprobs=True cannot be honoured: a 400 that names it, not a reply without logprobs."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=base, messages=PROMPT, max_tokens=4, logprobs=True)
    assert caught.value.param == "logprobs"
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "invalid_request_error"
    assert "logprobs" in caught.value.body["message"]


def test_unknown_parameter_is_refused(client: OpenAI, base: str) -> None:
    """A field the worker does not know is refused with a 400 that names it: nothing is ignored silently."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=base, messages=PROMPT, max_tokens=4, extra_body={"foo": 1})
    assert caught.value.param == "foo"
    assert "foo" in caught.value.message


def test_token(strict: EmbeddedWorker) -> None:
    """With a token set: a wrong key is a 401 (AuthenticationError), the right one works, /health needs none."""
    with client_for(strict, api_key="wrong") as wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.response.headers["www-authenticate"] == "Bearer"
    with client_for(strict, api_key="wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="demo-a", messages=PROMPT, max_tokens=2)
    with client_for(strict, api_key="s3cret") as right:
        base = next(m.id for m in right.models.list() if m.model_dump().get("parent") is None)
        reply = right.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=2)
        assert reply.usage is not None and reply.usage.completion_tokens == 2
    health = httpx2.get(strict.api + "/health", timeout=30)
    assert health.status_code == 200


def test_busy(strict: EmbeddedWorker) -> None:
    """With its one place taken by a streamed generation, the worker refuses another request at once with a 429
    (RateLimitError) and Retry-After; once the first is gone, requests are taken again."""
    with client_for(strict, api_key="s3cret") as sdk:
        base = next(m.id for m in sdk.models.list() if m.model_dump().get("parent") is None)
        # create() returns once the status is sent, which comes after admission: the place is taken.
        with sdk.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=LONG,
                                         stream=True) as running:
            next(iter(running))
            assert strict.service.admission.admitted == 1
            with pytest.raises(openai.RateLimitError) as caught:
                sdk.chat.completions.create(model=base, messages=PROMPT, max_tokens=2)
        assert caught.value.status_code == 429
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "busy"
        assert caught.value.body["type"] == "rate_limit_error" and caught.value.body["retryable"] is True
        wait_for(lambda: idle(strict))
        reply = sdk.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=2)
        assert reply.choices[0].finish_reason == "length"


def test_disconnect_stops_the_generation(worker: EmbeddedWorker, client: OpenAI, base: str) -> None:
    """A client that closes its stream after 2 chunks stops the generation: the request ends as cancelled (not by
    its max_tokens) and gives its batch row and admission place back."""
    wait_for(lambda: idle(worker))
    cancelled, by_length = requests_ended(worker, "cancelled"), requests_ended(worker, "length")
    stream = client.chat.completions.create(model=base, messages=PROMPT, temperature=0, max_tokens=LONG, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks)
    assert worker.service.admission.admitted == 1
    stream.close()
    wait_for(lambda: idle(worker))
    wait_for(lambda: requests_ended(worker, "cancelled") == cancelled + 1)
    assert requests_ended(worker, "length") == by_length, "the generation was stopped, not run to max_tokens"


# ---- vLLM's run-time LoRA routes -------------------------------------------------------------------------------------
def test_load_and_unload_lora_adapter(worker: EmbeddedWorker, client: OpenAI, base: str) -> None:
    """/v1/load_lora_adapter serves demo-b as model "mine" (listed, with the base as parent) until
    /v1/unload_lora_adapter: then "mine" is an unknown model again."""
    with httpx2.Client(base_url=worker.api, timeout=60) as http:
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "mine", "lora_path": "demo-b"})
        assert loaded.status_code == 200 and loaded.text.startswith("Success"), loaded.text
        reply = client.chat.completions.create(model="mine", messages=PROMPT, temperature=0, max_tokens=4)
        assert reply.model == "mine" and reply.usage is not None and reply.usage.completion_tokens == 4
        models = {m.id: m.model_dump() for m in client.models.list()}
        assert models["mine"]["parent"] == base and models["mine"]["root"] == "demo-b"
        assert "demo-b" in loaded_refs(worker)

        unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "mine"})
        assert unloaded.status_code == 200 and unloaded.text.startswith("Success"), unloaded.text
        assert "mine" not in {m.id for m in client.models.list()}
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="mine", messages=PROMPT, max_tokens=4)


def test_load_unknown_lora_adapter(worker: EmbeddedWorker) -> None:
    """Loading an adapter the store does not have is a 404 with OpenAI's error body."""
    with httpx2.Client(base_url=worker.api, timeout=60) as http:
        refused = http.post("/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": "no-such-adapter"})
    assert refused.status_code == 404
    error = refused.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["type"] == "invalid_request_error" and error["code"] == "adapter_not_found"
    assert isinstance(error["message"], str) and error["message"]


def test_a_lora_name_never_changes_the_weights_it_stands_for(worker: EmbeddedWorker) -> None:
    """A lora_name that already names other weights (an adapter of the store, an earlier lora_name) is refused with
    409, so `model=demo-b` never starts running demo-a's weights under its clients; load_inplace replaces only an
    alias of its own."""
    with httpx2.Client(base_url=worker.api, timeout=60) as http:
        taken = http.post("/v1/load_lora_adapter", json={"lora_name": "demo-b", "lora_path": "demo-a"})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "adapter_conflict"
        assert http.post("/v1/load_lora_adapter", json={"lora_name": "pair", "lora_path": "demo-a"}).status_code == 200
        again = http.post("/v1/load_lora_adapter", json={"lora_name": "pair", "lora_path": "demo-b"})
        assert again.status_code == 409
        replaced = http.post("/v1/load_lora_adapter",
                             json={"lora_name": "pair", "lora_path": "demo-b", "load_inplace": True})
        assert replaced.status_code == 200
        roots = {m["id"]: m["root"] for m in http.get("/v1/models").json()["data"]}
        assert roots["pair"] == "demo-b" and roots["demo-b"] == "demo-b"
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "pair"}).status_code == 200


@pytest.mark.parametrize("page", ["README.md", "docs/http.md"])
def test_the_docs_openai_example_works_as_written(worker: EmbeddedWorker, page: str, capsys) -> None:
    """The ``openai`` snippet of the README and of docs/http.md, run as written against a worker (only the demo's
    address replaced by this worker's): it prints the model's answer."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / page).read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "OpenAI(base_url" in b]
    assert len(blocks) == 1, f"{page}: one openai example"
    code = blocks[0].replace("http://localhost:8000", worker.api)
    exec(compile(code, page, "exec"), {})  # the project's own documentation
    assert capsys.readouterr().out.strip(), "the example printed the answer"
