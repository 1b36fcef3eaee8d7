"""The adapter store interface. Backends: a local directory (embedded default) and S3/MinIO.

A store holds adapters by name. ``fetch`` makes an adapter available as a local, verified directory; the worker
only ever loads from such a directory. Every method is blocking I/O: the worker calls them from threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import Manifest

# progress(stage, bytes_done, bytes_total): stage is "downloading" | "verifying" | "uploading".
Progress = Callable[[str, int, int | None], None]


def nothing() -> None:
    return None


@dataclass(frozen=True)
class Transfer:
    """What a fetch downloaded, and how long downloading and verifying took."""

    bytes: int
    download_s: float
    verify_s: float


@dataclass(frozen=True)
class FetchedAdapter:
    """An adapter available on the local disk, its files checked against ``manifest``.

    Call ``release`` once the files have been read: until then a cache will not remove them.
    """

    path: Path
    manifest: Manifest
    transfer: Transfer | None = None  # None: no bytes had to be transferred
    release: Callable[[], None] = field(default=nothing, repr=False)

    @property
    def cached(self) -> bool:
        return self.transfer is None


class AdapterStore(ABC):
    """What the worker and the CLI need from a place that holds adapters."""

    kind: str = "abstract"

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs and the CLI (no secrets)."""

    @abstractmethod
    def list(self) -> list[Manifest]:
        """Every adapter in the store, sorted by name."""

    @abstractmethod
    def manifest(self, name: str) -> Manifest:
        """The manifest of ``name``; AdapterNotFound when absent."""

    @abstractmethod
    def fetch(self, name: str, progress: Progress | None = None) -> FetchedAdapter:
        """A local directory with the verified files of ``name``."""

    @abstractmethod
    def publish(self, name: str, source: Path, *, replace: bool = False, progress: Progress | None = None) -> Manifest:
        """Validate the PEFT directory ``source`` and publish it as ``name`` (AdapterConflict if taken)."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Delete ``name``; AdapterNotFound when absent."""

    @abstractmethod
    def verify(self, name: str, progress: Progress | None = None) -> Manifest:
        """Re-hash every file of ``name`` against its manifest; AdapterInvalid on any difference."""

    def exists(self, name: str) -> bool:
        from wire.errors import AdapterNotFound

        try:
            self.manifest(name)
        except AdapterNotFound:
            return False
        return True
