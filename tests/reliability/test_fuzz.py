"""Property-based fuzzing of the protocol over a live connection: no crash, no hang, every reply valid,
every generate answered by exactly one terminal message."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_worker.embedded import EmbeddedWorker
from wire.protocol import CLIENT_TYPES

from ..conftest import worker_settings
from ..helpers import Client, image_b64

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_worker(demo, adapter_root):
    with EmbeddedWorker(worker_settings(demo, adapter_root, max_new_tokens=4, max_images_per_request=2)) as w:
        yield w


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                            max_size=4), max_leaves=10)
content = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}),
        st.fixed_dictionaries({"type": st.just("image"), "image": st.sampled_from(
            [image_b64((40, 30)), "not-base64", "data:image/gif;base64,R0lGODlh", "", "data:image/png;base64,"])}),
        json_values,
    ), max_size=3),
    json_values,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": content}
)
generate_fields = st.fixed_dictionaries(
    {"type": st.just("generate")},
    optional={
        "messages": st.lists(message, max_size=3) | json_values,
        "max_tokens": st.integers(-5, 10) | json_values,
        "temperature": st.floats(-1, 6) | json_values,
        "top_k": st.integers(-3, 100),
        "top_p": st.floats(-0.5, 1.5),
        "seed": st.integers(-1, 2**64),
        "repetition_penalty": st.floats(-1, 12),
        "stop": st.lists(st.text(max_size=5), max_size=10) | json_values,
        "adapter": st.sampled_from(["demo-a", "demo-b", None, "../x", "nope", ""]),
        "system_prompt": st.text(max_size=20) | json_values,
        "extra": json_values,
    },
)
other_messages = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(CLIENT_TYPES)}, optional={
        "adapter_path": st.sampled_from(["demo-a", None, "..", "/etc", "s3://b/x", 5]),
        "session_id": st.text(max_size=10) | json_values,
        "junk": json_values,
    }),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
)
frames = st.one_of(
    generate_fields.map(json.dumps),
    other_messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=80),
    st.binary(max_size=40),
)


def ping_after(c: Client, timeout: float = 30) -> list[dict]:
    """Send a ping and read up to its pong (every reply is validated by the strict client)."""
    c.send({"type": "ping"})
    return c.until("pong", timeout=timeout)


@FUZZ
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_any_frames_never_crash_or_hang_the_connection(fuzz_worker, batch):
    """Whatever frames arrive, replies are valid messages and the connection still answers a ping."""
    with Client(fuzz_worker.url) as c:
        for frame in batch:
            c.send(frame)
        ping_after(c)


@FUZZ
@given(frame=generate_fields.map(json.dumps))
def test_every_generate_gets_exactly_one_terminal(fuzz_worker, frame):
    """A generate (valid or not) gets exactly one done or error; nothing follows it but the next pong."""
    with Client(fuzz_worker.url) as c:
        c.send(frame)
        replies = c.until("done", "error", timeout=60)
        assert all(r["type"] in ("token", "adapter_progress") for r in replies[:-1])
        after = ping_after(c)
        assert [r["type"] for r in after] == ["pong"], "a second terminal message (or a late token) arrived"
    assert fuzz_worker.service.admission.admitted == 0
