"""Library errors as text a client may read."""

from __future__ import annotations

from pathlib import Path

MAX_CHARS = 300


def scrubbed(exc: BaseException, directory: Path | str) -> str:
    """A library's error about an adapter's files, for a client: its type and message without the server's directory
    of the adapter (``<adapter>`` instead), at most ``MAX_CHARS`` characters. The full text goes to the log
    (``detail``)."""
    return f"{type(exc).__name__}: {exc}".replace(str(directory), "<adapter>")[:MAX_CHARS]
