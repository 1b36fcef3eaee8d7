"""Optional shared-secret auth (INFERENCE_AUTH_TOKEN): refused at the handshake, health stays open."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, greedy

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def locked(demo, adapter_root):
    with EmbeddedWorker(worker_settings(demo, adapter_root, auth_token=TOKEN)) as w:
        yield w


def get(worker, path, headers=None):
    request = urllib.request.Request(worker.http + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize(
    ("suffix", "headers"),
    [("", None), ("?token=wrong", None), ("", {"Authorization": "Bearer wrong"}), ("", {"Authorization": TOKEN}),
     ("?token=", None)],
)
def test_missing_or_wrong_token_is_refused_at_the_handshake(locked, suffix, headers):
    """No token, a wrong one, or a malformed header: HTTP 401 before any WebSocket message can be sent."""
    loads_before = locked.service.metrics.adapter_loads.labels("loaded")._value.get()
    with pytest.raises(InvalidStatus) as info:
        Client(locked.url + "/" + suffix, additional_headers=headers)
    assert info.value.response.status_code == 401
    assert locked.service.metrics.adapter_loads.labels("loaded")._value.get() == loads_before
    assert not locked.service.sessions


@pytest.mark.parametrize(("suffix", "headers"), [("?token=" + TOKEN, None), ("", {"Authorization": "Bearer " + TOKEN})])
def test_right_token_in_header_or_query_is_accepted(locked, suffix, headers):
    """The token works as a Bearer header and as a ?token= query parameter."""
    with Client(locked.url + "/" + suffix, additional_headers=headers) as c:
        assert c.load("demo-a")["type"] == "adapter_loaded"
        assert c.generate(**greedy(max_tokens=4)).terminal["type"] == "done"


def test_health_and_ready_stay_open_metrics_needs_the_token(locked):
    """/health and /ready answer without a token; /metrics follows the socket's rule."""
    assert get(locked, "/health")[0] == 200 and json.loads(get(locked, "/health")[1])["status"] == "ok"
    assert get(locked, "/ready")[0] == 200
    assert get(locked, "/metrics")[0] == 401
    assert get(locked, "/metrics?token=wrong")[0] == 401
    status, body = get(locked, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and "inference_requests_total" in body
    assert get(locked, f"/metrics?token={TOKEN}")[0] == 200


def test_token_never_appears_in_status_or_health(locked):
    """The secret is not echoed by any endpoint."""
    assert TOKEN not in get(locked, "/health")[1]
    with Client(locked.url + f"/?token={TOKEN}") as c:
        assert TOKEN not in json.dumps(c.request({"type": "status"}, "status"))
