"""Optional shared-secret auth (INFERENCE_AUTH_TOKEN): refused at the handshake, health stays open."""

from __future__ import annotations

import json
import logging
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
    assert not locked.service.connections


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


def test_debug_log_of_handshakes_never_shows_the_token(locked, caplog):
    """At LOG_LEVEL=debug websockets logs every request line and header: the token is redacted in both."""
    caplog.set_level(logging.DEBUG, logger="websockets.server")
    with Client(locked.url + "/", additional_headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        c.request({"type": "ping"}, "pong")
    with Client(locked.url + f"/?token={TOKEN}&x=1") as c:
        c.request({"type": "ping"}, "pong")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "websockets.server")
    assert "< Authorization: [redacted]" in logged and "token=[redacted]&x=1" in logged, "the handshakes were logged"
    assert TOKEN not in logged


def test_health_names_the_model_without_its_path(worker, demo):
    """Unauthenticated /health says which model (a hub id, or a local directory's name), not where it is."""
    status, body = get(worker, "/health")
    assert status == 200 and json.loads(body)["model"] == demo.model_dir.name
    assert str(demo.root) not in body and "/tmp" not in body
    with Client(worker.url) as c:
        assert str(demo.root) not in json.dumps(c.request({"type": "status"}, "status"))


def test_adapter_errors_do_not_reveal_the_servers_paths(worker, demo):
    """adapter_not_found names the adapter, not the store's directory on the server."""
    with Client(worker.url) as c:
        err = c.load("no-such-adapter")
    assert err["code"] == "adapter_not_found" and "no-such-adapter" in err["message"]
    assert str(demo.store_dir) not in err["message"] and "/" not in err["message"], err["message"]
