"""The original service's HTTP API (``/infer``, ``/inference``, ``/health``, ``/``, ``/stats``, ``/metrics``) against
real embedded workers, with multipart uploads as its clients send them."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from PIL import Image

from diagrams import DiagramRenderer, Kind
from inference_worker.embedded import EmbeddedWorker

from ..conftest import DIAGRAMS_DATA, require, worker_settings
from ..helpers import png_bomb

TOKEN = "s3cret"
UI_ORIGIN = "http://ui.example"
KiB = 1024

# Every body any test here received: none may name a path on the server (the last test checks them all).
BODIES: list[str] = []


def picture(size: tuple[int, int] = (320, 240), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(buf, fmt)
    return buf.getvalue()


def _record(response: httpx.Response) -> None:
    response.read()
    BODIES.append(response.text)


def http_client(worker: EmbeddedWorker, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=worker.api, timeout=120, event_hooks={"response": [_record]}, **kwargs)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body of a refusal, checked: the status, the stable code, ``detail`` beside OpenAI's shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["detail"] == body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def upload(name: str, data: bytes, mime: str = "image/png", field: str = "file") -> dict[str, Any]:
    return {field: (name, data, mime)}


GREEDY = {"max_tokens": "8", "temperature": "0"}


@pytest.fixture(scope="module")
def api(worker: EmbeddedWorker) -> Iterator[httpx.Client]:
    with http_client(worker) as client:
        yield client


@pytest.fixture(scope="module")
def small(demo, adapter_root) -> Iterator[EmbeddedWorker]:
    """A worker whose bodies may be 64 KiB at most."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_message_bytes=64 * KiB)) as running:
        yield running


@pytest.fixture(scope="module")
def hurried(demo, adapter_root) -> Iterator[EmbeddedWorker]:
    """A worker that gives /infer one second."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, infer_timeout_s=1.0)) as running:
        yield running


@pytest.fixture(scope="module")
def locked(demo, adapter_root) -> Iterator[EmbeddedWorker]:
    with EmbeddedWorker(worker_settings(demo, adapter_root, auth_token=TOKEN)) as running:
        yield running


@pytest.fixture(scope="module")
def cors(demo, adapter_root) -> Iterator[EmbeddedWorker]:
    with EmbeddedWorker(worker_settings(demo, adapter_root, http_cors_origins=[UI_ORIGIN])) as running:
        yield running


# ---- /infer and /inference ------------------------------------------------------------------------------------------
def check_described(response: httpx.Response, demo, size: tuple[int, int], adapter: str | None = None) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert isinstance(body["description"], str)
    meta = body["metadata"]
    assert meta["image_size"] == list(size)
    assert meta["model"] == demo.model_dir.name  # the directory's name only, never its path
    assert meta["device"] == "cpu"
    assert meta["adapter"] == adapter
    for key in ("inference_time", "generation_time", "time_to_first_token"):
        assert isinstance(meta[key], float) and meta[key] >= 0, (key, meta)
    assert meta["generation_time"] <= meta["inference_time"]
    usage = meta["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert meta["finish_reason"] in ("stop", "length")
    return body  # type: ignore[no-any-return]


def test_infer_describes_a_png(api, demo):
    """POST /infer with a PNG in ``file``: the description and the original service's metadata."""
    png = picture((320, 240))
    first = check_described(api.post("/infer", files=upload("d.png", png), data=GREEDY), demo, (320, 240))
    assert first["metadata"]["diagram"] is None
    again = check_described(api.post("/infer", files=upload("d.png", png), data=GREEDY), demo, (320, 240))
    assert again["description"] == first["description"]  # greedy is deterministic


def test_infer_describes_a_jpeg(api, demo):
    jpeg = picture((200, 150), "JPEG")
    check_described(api.post("/infer", files=upload("d.jpg", jpeg, "image/jpeg"), data=GREEDY), demo, (200, 150))


def test_inference_takes_the_image_field(api, demo):
    """POST /inference (the migration plan's backend) takes the picture as ``image``; ``file`` is refused there."""
    png = picture((96, 64))
    check_described(api.post("/inference", files=upload("d.png", png, field="image"), data=GREEDY), demo, (96, 64))
    error = error_of(api.post("/inference", files=upload("d.png", png), data=GREEDY), 400, "invalid_message")
    assert "'file'" in error["message"] and "'image'" in error["message"]


def test_infer_with_an_adapter(api, demo):
    response = api.post("/infer", files=upload("d.png", picture()), data={**GREEDY, "adapter": "demo-a"})
    check_described(response, demo, (320, 240), adapter="demo-a")


def test_infer_draws_a_bpmn_source(api, demo, renderer):
    """A .bpmn file is drawn by the diagrams package, then described; the metadata says how it was drawn."""
    require(renderer, Kind.BPMN)
    source = (DIAGRAMS_DATA / "order-process.bpmn").read_bytes()
    response = api.post("/infer", files=upload("order-process.bpmn", source, "application/xml"), data=GREEDY)
    assert response.status_code == 200, response.text
    meta = response.json()["metadata"]
    diagram = meta["diagram"]
    assert diagram["kind"] == "bpmn"
    assert diagram["renderer"].startswith("bpmn-js")
    assert meta["image_size"] == [diagram["width"], diagram["height"]]
    assert diagram["width"] > 100 and diagram["height"] > 50


def test_a_diagram_source_without_renderers_is_415(api, monkeypatch):
    """No renderer for the kind: 415 renderer_missing, naming ``make renderers`` (and no path of the server)."""
    monkeypatch.setattr(DiagramRenderer, "missing",
                        lambda self, kind: "not installed: Chromium at /nowhere/chromium (make renderers)")
    source = (DIAGRAMS_DATA / "order-process.bpmn").read_bytes()
    response = api.post("/infer", files=upload("order-process.bpmn", source, "application/xml"), data=GREEDY)
    error = error_of(response, 415, "renderer_missing")
    assert "make renderers" in error["message"]
    assert "/nowhere" not in response.text  # what is missing where is for the operator's log


# ---- refusals ------------------------------------------------------------------------------------------------------
def test_an_oversize_body_is_413(small):
    """A body over MAX_MESSAGE_BYTES is refused from its Content-Length, before it is read."""
    blob = picture() + b"\0" * (200 * KiB)
    with http_client(small) as client:
        response = client.post("/infer", files=upload("big.png", blob), data=GREEDY)
        assert int(response.request.headers["content-length"]) > 200 * KiB
        error = error_of(response, 413, "request_too_large")
        assert str(64 * KiB) in error["message"]
        # the worker still serves a body under the bound
        assert client.post("/infer", files=upload("d.png", picture()), data=GREEDY).status_code == 200


def test_an_oversize_chunked_body_is_413(small):
    """Without Content-Length (chunked), the body is refused as soon as what arrived passes the bound."""
    blob = picture() + b"\0" * (200 * KiB)
    encoded = httpx.Request("POST", small.api + "/infer", files=upload("big.png", blob), data=GREEDY)
    body = encoded.read()
    sent = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8 * KiB):
            sent.append(i)
            yield body[i:i + 8 * KiB]

    with http_client(small) as client:
        response = client.post("/infer", content=chunks(),
                               headers={"content-type": encoded.headers["content-type"]})
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        error_of(response, 413, "request_too_large")
        assert client.post("/infer", files=upload("d.png", picture()), data=GREEDY).status_code == 200


def test_a_decompression_bomb_is_413(api):
    error = error_of(api.post("/infer", files=upload("bomb.png", png_bomb()), data=GREEDY), 413, "image_too_large")
    assert error["retryable"] is False


def test_a_file_that_is_no_picture_is_400(api):
    response = api.post("/infer", files=upload("x.txt", b"not a picture at all\n", "text/plain"), data=GREEDY)
    error = error_of(response, 400, "invalid_image")
    assert "PNG" in error["message"]


def test_an_unknown_form_field_is_400_naming_it(api):
    response = api.post("/infer", files=upload("d.png", picture()), data={**GREEDY, "colour": "red"})
    error = error_of(response, 400, "invalid_message")
    assert "'colour'" in error["message"]
    assert error["param"] == "colour"


def test_a_field_of_the_wrong_type_is_400(api):
    response = api.post("/infer", files=upload("d.png", picture()), data={"max_tokens": "many"})
    error = error_of(response, 400, "invalid_message")
    assert error["param"] == "max_tokens" and "'many'" in error["message"]


def test_a_field_out_of_range_is_400(api):
    response = api.post("/infer", files=upload("d.png", picture()), data={"temperature": "-1", "max_tokens": "4"})
    error = error_of(response, 400, "invalid_message")
    assert error["param"] == "temperature" and "errors.pydantic.dev" not in error["message"]


def test_a_missing_file_is_400(api):
    """A multipart form without the file, and a form that is not multipart at all."""
    response = api.post("/infer", files={"prompt": (None, "Describe it.")})
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    error = error_of(response, 400, "invalid_message")
    assert error["param"] == "file" and "'file'" in error["message"]
    error = error_of(api.post("/infer", data=GREEDY), 400, "invalid_message")
    assert "multipart/form-data" in error["message"]


def test_past_the_deadline_is_504_and_the_generation_stops(hurried):
    """INFER_TIMEOUT_S=1 and 2000 tokens asked: 504 deadline_exceeded, and the generation's place is given back."""
    service = hurried.service
    assert service.settings.max_new_tokens >= 2000
    with http_client(hurried) as client:
        started = time.monotonic()
        response = client.post("/infer", files=upload("d.png", picture()),
                               data={"max_tokens": "2000", "temperature": "0"})
        elapsed = time.monotonic() - started
        error = error_of(response, 504, "deadline_exceeded")
        assert "INFER_TIMEOUT_S=1s" in error["message"]  # the setting, not the time that was left
        assert elapsed < 10, f"the reply came {elapsed:.1f}s after the request, with a 1 s deadline"
        deadline = time.monotonic() + 10
        while service.admission.running or service.admission.queued or hurried.call(_engine_rows(service)):
            assert time.monotonic() < deadline, "the timed-out generation still holds its place or its batch row"
            time.sleep(0.05)
        # the worker goes on serving
        assert client.post("/infer", files=upload("d.png", picture()), data=GREEDY).status_code == 200


async def _engine_rows(service: Any) -> int:
    return int(service.engine.status().running)


# ---- service info, health, counters ------------------------------------------------------------------------------
def test_health(api):
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True and body["processor_loaded"] is True
    assert body["device"] == "cpu"
    assert isinstance(body["model_load_time"], float) and body["model_load_time"] >= 0


def test_ready(api):
    response = api.get("/ready")
    assert response.status_code == 200
    assert response.json()["ready"] is True


def test_root_lists_the_endpoints(api, demo, worker):
    response = api.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "inference-worker"
    assert body["model"] == demo.model_dir.name
    assert body["ready"] is True
    endpoints = body["endpoints"]
    for key in ("infer", "inference", "chat", "models", "health", "ready", "stats", "metrics", "docs", "websocket"):
        assert key in endpoints, key
    assert endpoints["infer"].startswith("POST /infer")
    assert endpoints["websocket"].startswith("ws://")


def test_root_names_the_websocket_port_in_use(api, worker):
    """GET / names the port the WebSocket server listens on (INFERENCE_PORT=0 here: a free one), not the setting."""
    assert f":{worker.port}/" in api.get("/").json()["endpoints"]["websocket"]


def test_stats_count_each_inference(api):
    before = api.get("/stats").json()
    assert api.post("/infer", files=upload("d.png", picture()), data=GREEDY).status_code == 200
    after = api.get("/stats").json()
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["total_inference_time"] >= before["total_inference_time"]
    assert after["avg_inference_time"] > 0
    assert after["running"] == 0 and after["queued"] == 0
    assert after["gpu_memory"] is None  # on the CPU
    assert isinstance(after["model_load_time"], float)


def test_metrics_are_prometheus_text(api):
    assert api.post("/infer", files=upload("d.png", picture()), data=GREEDY).status_code == 200
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "inference_requests_total" in response.text


def test_an_unknown_path_is_404_in_the_error_body(api):
    error_of(api.get("/nowhere"), 404, "not_found")


# ---- auth and CORS -------------------------------------------------------------------------------------------------
def test_the_token_is_needed_for_inference_not_for_health_or_docs(locked):
    with http_client(locked) as client:
        response = client.post("/infer", files=upload("d.png", picture()), data=GREEDY)
        error_of(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/infer", files=upload("d.png", picture()), data=GREEDY,
                            headers={"Authorization": "Bearer wrong"})
        error_of(wrong, 401, "unauthorized")
        error_of(client.get("/stats"), 401, "unauthorized")
        error_of(client.get("/metrics"), 401, "unauthorized")
        right = client.post("/infer", files=upload("d.png", picture()), data=GREEDY,
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200, right.text
        assert isinstance(right.json()["description"], str)
        for path in ("/health", "/ready", "/", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_no_cors_by_default(api):
    response = api.get("/health", headers={"Origin": UI_ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = api.options("/infer", headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_the_configured_origins_only(cors):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    with http_client(cors) as client:
        preflight = client.options("/infer", headers={"Origin": UI_ORIGIN, **ask})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        other = client.options("/infer", headers={"Origin": "http://evil.example", **ask})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        simple = client.post("/infer", files=upload("d.png", picture()), data=GREEDY, headers={"Origin": UI_ORIGIN})
        assert simple.status_code == 200
        assert simple.headers["access-control-allow-origin"] == UI_ORIGIN
        foreign = client.get("/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers


# ---- nothing of the server's file system in any reply ---------------------------------------------------------------
def test_no_server_path_in_any_reply(api, demo, adapter_root):
    """The service info, health, counters and error bodies name no directory of the server."""
    api.get("/")
    api.get("/health")
    api.get("/ready")
    api.get("/stats")
    api.get("/nowhere")
    api.post("/infer", files=upload("x.txt", b"text", "text/plain"))
    api.post("/infer", files=upload("d.png", picture()), data={**GREEDY, "adapter": "/elsewhere/adapter"})
    api.post("/infer", files=upload("d.png", picture()), data={**GREEDY, "adapter": "no-such-adapter"})
    secrets = {str(demo.root), str(demo.model_dir), str(demo.store_dir), str(adapter_root), str(Path.cwd())}
    assert len(BODIES) >= 8
    for body in BODIES:
        for secret in secrets:
            assert secret not in body, (secret, body[:500])


def test_a_form_field_that_is_not_utf8_is_400_naming_it(api):
    response = api.post("/infer", files={**upload("d.png", picture()), "prompt": (None, b"\xff\xfe")}, data=GREEDY)
    assert error_of(response, 400, "invalid_message")["param"] == "prompt"


def test_requests_in_flight_beyond_max_connections_are_busy_probes_still_answer(demo, adapter_root):
    """MAX_CONNECTIONS=1: while one /infer is in flight, another gets 429 busy with Retry-After (the API's error
    body, before its body is read); /health and /ready answer all the same."""
    import threading

    settings = worker_settings(demo, adapter_root, max_connections=1, max_new_tokens=4096)
    with EmbeddedWorker(settings) as running, http_client(running) as client:
        service = running.service
        first: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: first.setdefault("response", client.post(
            "/infer", files=upload("d.png", picture()), data={"max_tokens": "4000", "temperature": "0"})))
        thread.start()
        deadline = time.monotonic() + 30
        while not service.admission.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.admission.running == 1
        with http_client(running) as other:
            refused = other.post("/infer", files=upload("d.png", picture()), data=GREEDY)
            assert error_of(refused, 429, "busy")["retryable"] is True
            assert refused.headers["retry-after"] == "1" and "MAX_CONNECTIONS" in refused.json()["detail"]
            assert other.get("/health").status_code == 200 and other.get("/ready").status_code == 200
        thread.join(120)
        assert first["response"].status_code == 200


def test_a_model_directory_is_never_named_by_its_path(tmp_path):
    """Even a model that failed to load (its directory missing) is named by its last part, and the load error in
    /health by its type: the server's paths stay in its log."""
    from inference_worker.config import Settings
    from inference_worker.service import Service

    service = Service(Settings(model_name=str(tmp_path / "secret" / "qwen-missing"), http_port=None))
    service.load_error = f"OSError: {tmp_path}/secret/qwen-missing is not a directory"
    health = service.health()
    assert health["model"] == "qwen-missing" and str(tmp_path) not in str(health)
    assert health["error"].startswith("OSError")
    assert Service(Settings(model_name="Qwen/Qwen3-VL-2B-Instruct", http_port=None)).public_model_name == \
        "Qwen/Qwen3-VL-2B-Instruct"
