"""Hostile frames and handshakes, tried as an attacker would on loopback: answers that stay well-formed, memory
that stays bounded, and an event loop that keeps serving everyone else.

The latency bounds are generous on purpose (a shared 2-core machine): each attack here stalled other clients for
seconds before the fixes, and costs them tens of milliseconds after.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import psutil
import pytest
from websockets.exceptions import InvalidStatus

from inference_worker.embedded import EmbeddedWorker

from ..conftest import worker_settings
from ..helpers import Client, greedy

STALL_BOUND_S = 0.5  # a fresh client's ping round trip during an attack (unfixed: 0.5-10 s)
LARGE_GENERATE = json.dumps({"type": "generate", "messages": [{"role": "user", "content": "x"}] * 400_000})


@pytest.fixture(scope="module")
def deflate_worker(demo, adapter_root):
    """A worker with permessage-deflate enabled (WS_COMPRESSION)."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, ws_compression=True)) as w:
        yield w


class PingProbe:
    """A separate client that pings the worker every 10 ms and records each round trip."""

    def __init__(self, url: str) -> None:
        self.client = Client(url, compression=None)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            assert self.client.request({"type": "ping"}, "pong", timeout=60)["type"] == "pong"
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    def __enter__(self) -> PingProbe:
        self._thread.start()
        while not self.latencies:  # connected and answered once before the attack starts
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # a ping or two after the attack, so a stall that outlasts it is measured
        self._stop.set()
        self._thread.join(60)
        self.client.close()

    @property
    def worst(self) -> float:
        return max(self.latencies)


def raw_websocket(port: int, extensions: str = "") -> socket.socket:
    """A hand-made WebSocket client socket (handshake done), to send bytes no library client would."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"{extensions}\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += s.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return s


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (masked with a zero key, which leaves the payload as is)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return b"\x81" + length + b"\0\0\0\0" + payload


def http_status(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4:
                break
    return int(data.split(b" ", 2)[1]), data


# ---- bad input: the answer is an error with its code, and the connection stays usable ---------------------------
@pytest.mark.parametrize("frame", [
    '{"type": "ping", "x": ' + "1" * 5000 + "}",
    '{"type": "generate", "messages": [{"role": "user", "content": "x"}], "max_tokens": ' + "9" * 5000 + "}",
    '{"type": "generate", "messages": [{"role": "user", "content": "x"}], "seed": ' + "7" * 4301 + "}",
])
def test_an_integer_of_more_than_4300_digits_is_invalid_json(worker, frame):
    """Python refuses to convert such integers (ValueError): invalid_json, not a 1011 close."""
    with Client(worker.url) as c:
        c.send(frame)
        reply = c.recv()
        assert reply["type"] == "error" and reply["code"] == "invalid_json", reply
        assert c.request({"type": "ping"}, "pong") == {"type": "pong"}


@pytest.mark.parametrize(("field", "frame"), [
    ("session_id", '{"type": "generate", "session_id": "\\udc00", "messages": [{"role": "user", "content": "x"}]}'),
    ("content", '{"type": "generate", "messages": [{"role": "user", "content": "a\\udc00b"}], "max_tokens": 2}'),
    ("system_prompt",
     '{"type": "generate", "system_prompt": "\\ud800", "messages": [{"role": "user", "content": "x"}]}'),
    ("text part",
     '{"type": "generate", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'),
    ("key", '{"type": "ping", "\\udc00": 1}'),
    ("adapter_path", '{"type": "load_adapter", "adapter_path": "\\udc00"}'),
])
def test_a_lone_surrogate_is_invalid_message(worker, field, frame):
    """A JSON escape of half a UTF-16 pair is not text: invalid_message, and the connection stays usable."""
    with Client(worker.url) as c:
        c.send(frame)
        reply = c.recv()
        assert reply["type"] == "error" and reply["code"] == "invalid_message", (field, reply)
        assert "surrogate" in reply["message"]
        assert c.request({"type": "ping"}, "pong") == {"type": "pong"}


def test_a_surrogate_pair_is_text(worker):
    """A correctly escaped pair (an emoji, as json.dumps writes it) is accepted."""
    with Client(worker.url) as c:
        c.send(json.dumps({"type": "generate", "session_id": "emoji-\U0001F600", **greedy("\U0001F600", max_tokens=2)}))
        assert c.collect("emoji-\U0001F600").terminal["type"] == "done"


@pytest.mark.parametrize("frame", [
    json.dumps({"type": "ping", "k" * 1_000_000: 1}),
    json.dumps({"type": "generate", "messages": [{"role": "user", "content": "x", "k" * 1_000_000: 1}]}),
    json.dumps({"type": "generate", "messages": [{"role": "user", "content": [{"type": "text" * 250_000}]}]}),
])
def test_error_messages_do_not_echo_megabytes(worker, frame):
    """A 1 MB field name comes back shortened: the whole error stays under 2 KB."""
    with Client(worker.url) as c:
        c.send(frame)
        reply = c.recv()
        assert reply["type"] == "error" and reply["code"] in ("invalid_message", "unknown_type"), reply["code"]
        assert len(json.dumps(reply)) < 2000, len(json.dumps(reply))
        assert c.request({"type": "ping"}, "pong") == {"type": "pong"}


@pytest.mark.parametrize("header", ["Authorization", "Upgrade"])
def test_duplicate_headers_are_400_with_one_log_line(demo, adapter_root, caplog, header):
    """Two Authorization or Upgrade headers: HTTP 400 and one log line, not 500 and a traceback."""
    settings = worker_settings(demo, adapter_root, auth_token="t0ken")
    with EmbeddedWorker(settings) as w:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            value = "Bearer t0ken" if header == "Authorization" else "websocket"
            request = ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Authorization: Bearer t0ken\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       f"Sec-WebSocket-Version: 13\r\n{header}: {value}\r\n\r\n").encode()
            status, body = http_status(w.port, request)
            time.sleep(0.2)
        assert status == 400, body
        assert b"duplicate" in body
        records = [r for r in caplog.records if r.levelno >= logging.INFO and "duplicate" in r.getMessage()]
        assert len(records) == 1, [r.getMessage() for r in caplog.records]
        assert not any(r.exc_info for r in caplog.records), "no traceback"
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)


# ---- resource use under hostile traffic ------------------------------------------------------------------------
def test_compression_is_off_by_default(worker):
    """A client offering permessage-deflate gets an uncompressed connection (a frame cannot inflate ~1000x)."""
    with Client(worker.url, compression="deflate") as c:
        assert c.ws.protocol.extensions == []


def test_compression_can_be_enabled(deflate_worker):
    """WS_COMPRESSION=true negotiates permessage-deflate."""
    with Client(deflate_worker.url, compression="deflate") as c:
        assert [type(e).__name__ for e in c.ws.protocol.extensions] == ["PerMessageDeflate"]
        assert c.generate(**greedy(max_tokens=4)).terminal["type"] == "done"


def test_max_connections_refuses_with_503_and_frees_the_slot(demo, adapter_root):
    """Beyond MAX_CONNECTIONS a handshake gets 503; /health stays open; a closed connection frees its slot."""
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_connections=2)) as w:
        first, second = Client(w.url), Client(w.url)
        with pytest.raises(InvalidStatus) as info:
            Client(w.url)
        assert info.value.response.status_code == 503
        assert b"too_many_connections" in info.value.response.body
        assert http_status(w.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        first.close()
        deadline = time.monotonic() + 10
        while len(w.service.connections) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with Client(w.url) as third:
            assert third.request({"type": "ping"}, "pong") == {"type": "pong"}
        second.close()


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def test_refused_large_frames_do_not_pile_up_in_memory(worker):
    """30 refused 15 MiB frames in a row: memory stays near one frame's worth (they were kept until a GC pass)."""
    frame = masked_text_frame(json.dumps({"type": "ping", "x": "A" * (15 * 2**20)}).encode())
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    s = raw_websocket(worker.port)
    try:
        for _ in range(30):
            s.sendall(frame)
        replies = b""
        while replies.count(b"invalid_message") < 30:
            replies += s.recv(65536)
    finally:
        s.close()
        done.set()
        sampler.join()
    assert peak[0] - before < 300, f"RSS grew {peak[0] - before:.0f} MiB for 30 refused 15 MiB frames"


def test_a_large_generate_does_not_stall_other_clients(worker):
    """Three 13 MiB frames of 400,000 messages each are refused before parsing; another client's pings flow."""
    with PingProbe(worker.url) as probe, Client(worker.url, compression=None) as attacker:
        replies = []
        for _ in range(3):
            attacker.send(LARGE_GENERATE)
            replies.append(attacker.recv())
    assert probe.worst < STALL_BOUND_S, f"a ping took {probe.worst * 1000:.0f} ms"
    assert all(r["code"] == "invalid_message" and "MAX_FRAME_JSON_ITEMS" in r["message"] for r in replies), replies


def test_compressed_large_generates_do_not_stall_other_clients(deflate_worker):
    """With compression on, five small compressed frames that inflate to such requests: pings still flow."""
    with PingProbe(deflate_worker.url) as probe, Client(deflate_worker.url, compression="deflate") as attacker:
        assert attacker.ws.protocol.extensions, "compressed"
        for _ in range(5):
            attacker.send(LARGE_GENERATE)
        for _ in range(5):
            assert attacker.recv()["code"] == "invalid_message"
    assert probe.worst < STALL_BOUND_S, f"a ping took {probe.worst * 1000:.0f} ms"


def test_a_pipelined_flood_does_not_starve_other_clients(worker):
    """100,000 requests sent in one write: the worker answers them, and the other clients' pings in between."""
    flood = masked_text_frame(b'{"type": "ping"}') * 100_000
    with PingProbe(worker.url) as probe:
        s = raw_websocket(worker.port)
        replies = bytearray()

        def read() -> None:
            while replies.count(b"pong") < 100_000 and (chunk := s.recv(1 << 20)):
                replies.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            s.sendall(flood)
            reader.join(120)
        finally:
            s.close()
        assert replies.count(b"pong") == 100_000
    assert probe.worst < STALL_BOUND_S, f"a ping took {probe.worst * 1000:.0f} ms"
