"""The worker over a real socket, what only an in-process worker can show. The protocol itself, which every engine
speaks, is tested in tests/conformance/test_protocol_suite.py."""

from __future__ import annotations

import pytest

from ..helpers import Client, greedy


def test_oversized_frame_closes_only_that_connection(demo, adapter_root):
    """A frame over MAX_MESSAGE_BYTES closes that connection with 1009; other clients carry on."""
    from websockets.exceptions import ConnectionClosedError

    from inference_worker.embedded import EmbeddedWorker

    from ..conftest import worker_settings

    with EmbeddedWorker(worker_settings(demo, adapter_root, max_message_bytes=64 * 1024)) as small:
        with Client(small.url) as ok, Client(small.url) as big:
            big.send({"type": "generate", "messages": [{"role": "user", "content": "x" * 100_000}]})
            with pytest.raises(ConnectionClosedError) as info:
                big.recv(10)
            assert info.value.rcvd.code == 1009
            assert ok.request({"type": "ping"}, "pong")["type"] == "pong"
            assert ok.generate(**greedy(max_tokens=4)).terminal["type"] == "done"


