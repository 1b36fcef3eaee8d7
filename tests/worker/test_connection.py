"""One connection's state without I/O: its generations, the order of its adapter changes, one terminal each."""

from __future__ import annotations

import asyncio

import pytest

from inference_worker.connection import ConnectionState
from inference_worker.events import AdapterHandle
from wire.errors import DuplicateSession, ErrorCode, TooManySessions, UnknownSession

A = AdapterHandle("demo-a", "key-a")
B = AdapterHandle("demo-b", "key-b")


def test_a_session_id_runs_once_at_a_time_and_the_count_is_bounded():
    """A running session_id is refused again (duplicate_session); past the limit, too_many_sessions (retryable);
    an ended one may be used again."""
    state = ConnectionState(max_generations=2)
    first = state.start("s1", "r1")
    assert (first.session_id, first.reply_to) == ("s1", "r1") and first.request_id
    with pytest.raises(DuplicateSession):
        state.start("s1")
    state.start("s2")
    with pytest.raises(TooManySessions) as info:
        state.start("s3")
    assert info.value.retryable and info.value.code == ErrorCode.TOO_MANY_SESSIONS
    assert state.end(first)
    assert state.start("s1").request_id != first.request_id


def test_a_generation_ends_exactly_once():
    """end() is true the first time only: the terminal message is sent once, even when a second path ends it."""
    state = ConnectionState(max_generations=4)
    gen = state.start("s")
    assert state.end(gen) is True
    assert state.end(gen) is False
    again = state.start("s")
    assert state.end(gen) is False and state.generations == {"s": again}


def test_cancel_of_an_unknown_session_is_an_error():
    """find() of a session_id that is not running raises unknown_session."""
    state = ConnectionState(max_generations=4)
    with pytest.raises(UnknownSession):
        state.find("nope")
    gen = state.start("s")
    assert state.find("s") is gen


def test_a_connection_starts_on_its_default_adapter():
    """The default adapter (INFERENCE_DEFAULT_ADAPTER) is the connection's until it changes it."""
    assert ConnectionState(max_generations=1, adapter=A).adapter_for_generate() == A
    assert ConnectionState(max_generations=1).adapter_for_generate() is None


async def test_adapter_changes_apply_in_order_and_generates_see_the_change_before_them():
    """Each change waits for the one before it; a generate sent between two changes runs with the first one's
    adapter, even when the second finishes loading first; a failed change leaves the adapter as it was."""
    state = ConnectionState(max_generations=4)
    first = state.change_adapter()
    between = state.adapter_for_generate()
    second = state.change_adapter()
    after = state.adapter_for_generate()
    assert isinstance(between, asyncio.Future) and isinstance(after, asyncio.Future)

    second_turn = asyncio.ensure_future(second.turn())
    await asyncio.sleep(0)
    assert not second_turn.done()  # the second change waits for the first
    first.apply(A)
    await second_turn
    assert await between == A and not after.done()
    second.keep()  # the second change failed: the connection stays on A
    assert await after == A
    assert state.adapter_for_generate() == A

    third = state.change_adapter()
    await third.turn()
    third.apply(None)  # load_adapter null: back to the base model
    assert state.adapter_for_generate() is None and state.adapter is None


async def test_a_change_applied_twice_resolves_once():
    """keep() after apply() (the session's finally) changes nothing."""
    state = ConnectionState(max_generations=1)
    change = state.change_adapter()
    pending = state.adapter_for_generate()
    change.apply(B)
    change.keep()
    assert await pending == B and state.adapter == B


def test_closing_returns_the_running_generations():
    """close() marks the connection closed and hands back what is still running, to be stopped."""
    state = ConnectionState(max_generations=4)
    a, b = state.start("a"), state.start("b")
    state.end(a)
    assert state.close() == [b] and state.closed
