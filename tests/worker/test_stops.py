"""Stop strings over streamed pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference_worker.stops import StopMatcher


def run(pieces, stops):
    m = StopMatcher(stops)
    out = [m.feed(p) for p in pieces]
    return "".join(out) + m.flush(), m.stopped


def test_stop_inside_a_piece_truncates_before_it():
    """Text up to (not including) the stop string is emitted; nothing after."""
    assert run(["hello END world"], ["END"]) == ("hello ", True)


def test_stop_split_across_pieces_is_found_and_never_leaked():
    """A stop string spread over pieces is held back until it is recognised."""
    m = StopMatcher(["</s>"])
    assert m.feed("abc<") == "abc"
    assert m.feed("/") == ""
    assert m.feed("s>tail") == ""
    assert m.stopped


def test_false_alarm_is_released():
    """A held-back prefix that turns out not to be a stop is emitted with the next piece or at the end."""
    m = StopMatcher(["</s>"])
    assert m.feed("a</") == "a"
    assert m.feed("x") == "</x"
    assert m.feed("</") == ""
    assert m.flush() == "</"


def test_no_stops_passes_everything_through():
    """Without stop strings every piece is emitted as is."""
    assert run(["a", "b"], []) == ("ab", False)


@given(st.lists(st.text(max_size=8), max_size=12), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_output_is_the_text_before_the_first_stop(pieces, stops):
    """Whatever the split, the emitted text is the whole text cut at the earliest stop string."""
    text = "".join(pieces)
    hits = [i for i in (text.find(s) for s in stops) if i != -1]
    expected = text[: min(hits)] if hits else text
    out, stopped = run(pieces, stops)
    assert out == expected and stopped == bool(hits)
