"""A verified, content-addressed local cache of adapters downloaded from a remote store.

``root/objects/<digest>/`` holds the files of one adapter version and its ``manifest.json``. An entry only ever
appears by an atomic rename of a temporary directory whose every file was checked (size and sha256) against the
manifest, so a crash or a bad byte never leaves a half adapter that looks complete. The key is the manifest digest:
a re-published adapter is fetched again, an unchanged one is not, and the same bytes under two names are stored
once. Concurrent fetches of one digest in this process share one download. Beyond ``max_bytes`` the least recently
used entries are removed, except those in use (pinned until the worker has loaded them).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from wire.errors import AdapterForbidden, AdapterInvalid

from .manifest import MANIFEST_FILE, Manifest
from .refs import safe_join
from .store import FetchedAdapter, Progress, Transfer
from .validate import OPTIONAL_FILES, PICKLE_SUFFIXES, REQUIRED_FILES

log = logging.getLogger(__name__)

ALLOWED_FILES = frozenset(REQUIRED_FILES) | OPTIONAL_FILES
_USED = ".last_used"

# open_stream(file_name) → a context manager yielding the file's bytes in chunks
Opener = Callable[[str], AbstractContextManager[Iterator[bytes]]]


class VerifiedCache:
    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._pins: Counter[str] = Counter()
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # left by a crash: never complete, never used
            shutil.rmtree(stale, ignore_errors=True)

    def _lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def entry(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AdapterForbidden(f"invalid digest {digest[:80]!r}")
        return self.objects / digest

    def _pin(self, digest: str) -> Callable[[], None]:
        with self._guard:
            self._pins[digest] += 1
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._guard:
                    self._pins[digest] -= 1

        return release

    def lookup(self, manifest: Manifest) -> Path | None:
        path = self.entry(manifest.digest)
        if not (path / MANIFEST_FILE).is_file():
            return None
        with contextlib.suppress(OSError):
            (path / _USED).touch()
        return path

    def fetch(self, manifest: Manifest, open_stream: Opener, progress: Progress | None = None) -> FetchedAdapter:
        """The verified local copy of ``manifest``'s adapter, downloading it with ``open_stream`` if needed."""
        self._check_names(manifest)
        digest = manifest.digest
        with self._lock(digest):
            release = self._pin(digest)
            try:
                path = self.lookup(manifest)
                if path is not None:
                    return FetchedAdapter(path, manifest, release=release)
                result = self._download(manifest, open_stream, progress, release)
            except BaseException:
                release()
                raise
        self.evict(keep=digest)
        return result

    @staticmethod
    def _check_names(manifest: Manifest) -> None:
        for name in manifest.files:
            if name not in ALLOWED_FILES:
                if name.endswith(PICKLE_SUFFIXES):
                    raise AdapterInvalid(f"manifest lists {name!r}: pickle files are never downloaded or loaded")
                raise AdapterForbidden(f"manifest lists a file outside the adapter format: {name[:200]!r}")
        missing = [f for f in REQUIRED_FILES if f not in manifest.files]
        if missing:
            raise AdapterInvalid(f"manifest lacks {', '.join(missing)}")

    def _download(self, manifest: Manifest, open_stream: Opener, progress: Progress | None,
                  release: Callable[[], None]) -> FetchedAdapter:
        total = manifest.size
        done = 0
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=manifest.digest[:16] + "-", dir=self.tmp))
        try:
            hashes: dict[str, tuple[int, str]] = {}
            for name, expected in manifest.files.items():
                target = safe_join(staging, name)
                h = hashlib.sha256()
                size = 0
                with open_stream(name) as chunks, target.open("wb") as out:
                    for chunk in chunks:
                        size += len(chunk)
                        if size > expected.size:
                            raise AdapterInvalid(f"{name} is larger than its manifest says ({expected.size} bytes)")
                        h.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress("downloading", done, total)
                    out.flush()
                    os.fsync(out.fileno())
                hashes[name] = (size, h.hexdigest())
            downloaded = time.perf_counter()
            checked = 0
            for name, expected in manifest.files.items():
                size, sha = hashes[name]
                if size != expected.size or sha != expected.sha256:
                    raise AdapterInvalid(
                        f"{name} does not match the manifest (sha256 {sha[:12]}…, expected {expected.sha256[:12]}…, "
                        f"{size} vs {expected.size} bytes): the object is corrupt or was tampered with"
                    )
                checked += size
                if progress is not None:
                    progress("verifying", checked, total)
            (staging / MANIFEST_FILE).write_text(manifest.to_json())
            (staging / _USED).touch()
            final = self.entry(manifest.digest)
            try:
                os.replace(staging, final)
            except OSError:
                if not (final / MANIFEST_FILE).is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # another process finished the same download first
            verified = time.perf_counter()
            transfer = Transfer(bytes=done, download_s=downloaded - started, verify_s=verified - downloaded)
            return FetchedAdapter(final, manifest, transfer, release)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    # ---- size bound ------------------------------------------------------------------------------------------
    def entries(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, path) of every complete entry."""
        out = []
        for path in self.objects.iterdir():
            if not (path / MANIFEST_FILE).is_file():
                continue
            try:
                used = (path / _USED).stat().st_mtime
                size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            except OSError:
                continue
            out.append((used, size, path))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes``; returns the removed digests."""
        removed = []
        with self._guard:
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                if path.name == keep or self._pins[path.name] > 0:
                    continue
                trash = self.tmp / f"evict-{path.name}-{time.monotonic_ns()}"
                try:
                    os.replace(path, trash)
                except OSError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
                total -= size
                removed.append(path.name)
                log.info("adapter cache: evicted %s (%d bytes) to stay under %d bytes", path.name[:12], size,
                         self.max_bytes)
        return removed
