"""One connection's state, without I/O: its running generations, the order of its adapter changes, and exactly one
terminal message per ``generate``.

The WebSocket session (``session.py``) drives it and does the I/O; tests drive it with no socket at all.

    state = ConnectionState(max_generations=8, adapter=default)
    gen = state.start(session_id, reply_to)      # DuplicateSession / TooManySessions
    adapter = state.adapter_for_generate()       # what a generate sent now runs with (maybe a change still loading)
    change = state.change_adapter()              # a load_adapter: await change.turn(), then change.apply(...) or
                                                 # change.keep()
    if state.end(gen): send its terminal         # True once per generation
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from wire.errors import DuplicateSession, TooManySessions, UnknownSession

from .events import AdapterHandle


@dataclass(eq=False)
class Generation:
    """One ``generate`` of the connection, from its admission to its terminal message."""

    session_id: str
    reply_to: str | None = None  # the client's request_id of the generate, echoed on its tokens and its end
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the service's id of the request


class AdapterChange:
    """One ``load_adapter``, in the order the client sent it: it takes its turn once the change before it has been
    applied, and every generate sent after it (and before the next) runs with the adapter it leaves."""

    def __init__(self, state: ConnectionState, previous: AdapterChange | None) -> None:
        self._state = state
        self._previous = previous
        self.applied: asyncio.Future[AdapterHandle | None] = asyncio.get_running_loop().create_future()

    async def turn(self) -> None:
        """Wait until every change sent before this one has been applied (or failed)."""
        previous, self._previous = self._previous, None  # no chain of finished changes kept alive
        if previous is not None:
            await asyncio.wait([previous.applied])

    def apply(self, adapter: AdapterHandle | None) -> None:
        """The change succeeded: the connection runs with ``adapter`` (None: the base model) from now on."""
        self._state.adapter = adapter
        self.keep()

    def keep(self) -> None:
        """The change is over (done or failed): the generates waiting for it go on with the connection's adapter."""
        if not self.applied.done():
            self.applied.set_result(self._state.adapter)
        if self._state._pending is self:
            self._state._pending = None


class ConnectionState:
    def __init__(self, max_generations: int, adapter: AdapterHandle | None = None) -> None:
        self.max_generations = max_generations
        self.generations: dict[str, Generation] = {}
        self.adapter = adapter  # the connection's adapter once every change sent so far is applied; None: base model
        self._pending: AdapterChange | None = None  # the last change sent, until it is applied
        self.closed = False

    # ---- generations -------------------------------------------------------------------------------------------
    def start(self, session_id: str, reply_to: str | None = None) -> Generation:
        """A new generation of this connection."""
        if session_id in self.generations:
            raise DuplicateSession(f"session_id {session_id!r} is already running on this connection")
        if len(self.generations) >= self.max_generations:
            raise TooManySessions(f"this connection already runs {self.max_generations} generations "
                                  "(MAX_SESSIONS_PER_CONNECTION)")
        gen = Generation(session_id, reply_to)
        self.generations[session_id] = gen
        return gen

    def find(self, session_id: str) -> Generation:
        gen = self.generations.get(session_id)
        if gen is None:
            raise UnknownSession(f"no running generation with session_id {session_id!r} on this connection")
        return gen

    def end(self, gen: Generation) -> bool:
        """The generation is over: True the first time (send its terminal message then), False after."""
        if self.generations.get(gen.session_id) is not gen:
            return False
        del self.generations[gen.session_id]
        return True

    # ---- adapters ----------------------------------------------------------------------------------------------
    def change_adapter(self) -> AdapterChange:
        """A ``load_adapter`` was received: its place in the order of changes."""
        change = AdapterChange(self, self._pending)
        self._pending = change
        return change

    def adapter_for_generate(self) -> AdapterHandle | asyncio.Future[AdapterHandle | None] | None:
        """The adapter a generate sent now runs with: the connection's, once every change sent before it applies
        (a future while one is still loading)."""
        if self._pending is not None:
            return self._pending.applied
        return self.adapter

    def close(self) -> list[Generation]:
        """The connection is gone: its running generations, to stop."""
        self.closed = True
        return list(self.generations.values())
