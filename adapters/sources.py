"""Resolve an ``adapter_path`` into a content identity and, when needed, a verified local directory.

Two steps, so that switching to an adapter that is already in memory costs one manifest read and no transfer:
``identify`` (authorise the reference, read the manifest: which content is this?) and ``materialize`` (make the
files available locally and validate them). Both are blocking; the worker runs them in threads.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .manifest import Manifest
from .refs import AdapterRef, LocalRef, S3Ref, StoreRef, parse_ref
from .store import AdapterStore, Progress, Transfer, nothing
from .validate import REQUIRED_FILES, AdapterFacts, inspect_adapter


@dataclass(frozen=True)
class Identity:
    ref: AdapterRef
    key: str  # same key ⇒ same bytes
    name: str
    digest: str
    manifest: Manifest | None = None


@dataclass(frozen=True)
class Materialized:
    identity: Identity  # what was fetched (a newer version if it was re-published meanwhile)
    path: Path
    facts: AdapterFacts
    transfer: Transfer | None = None  # None: no bytes were transferred
    release: Callable[[], None] = field(default=nothing, repr=False)

    @property
    def cached(self) -> bool:
        return self.transfer is None


class AdapterSources:
    def __init__(
        self,
        store: AdapterStore,
        *,
        local_roots: Sequence[Path] = (),
        s3_stores: dict[str, AdapterStore] | None = None,
    ) -> None:
        self.store = store
        self.local_roots = [Path(r) for r in local_roots]
        self.s3_stores = s3_stores  # bucket → store over that bucket (None: no S3 configured)
        self._local_digests: dict[Path, tuple[tuple[tuple[int, int, int], ...], str]] = {}
        self._lock = threading.Lock()

    def parse(self, value: str) -> AdapterRef:
        buckets = sorted(self.s3_stores) if self.s3_stores is not None else None
        return parse_ref(value, local_roots=self.local_roots, allowed_buckets=buckets)

    def _store_for(self, ref: StoreRef | S3Ref) -> tuple[AdapterStore, str]:
        if isinstance(ref, StoreRef):
            return self.store, ref.name
        assert self.s3_stores is not None
        return self.s3_stores[ref.bucket], ref.prefix

    def identify(self, value: str) -> Identity:
        ref = self.parse(value)
        if isinstance(ref, LocalRef):
            digest = self._local_digest(ref.path)
            return Identity(ref, f"local:{ref.path}@{digest}", ref.path.name, digest)
        store, name = self._store_for(ref)
        manifest = store.manifest(name)
        return Identity(ref, f"{store.kind}:{ref}@{manifest.digest}", name, manifest.digest, manifest)

    def materialize(self, identity: Identity, progress: Progress | None = None) -> Materialized:
        """Make the adapter's files available locally and validate them. Call ``release`` when done with them."""
        ref = identity.ref
        if isinstance(ref, LocalRef):
            return Materialized(identity, ref.path, inspect_adapter(ref.path))
        store, name = self._store_for(ref)
        fetched = store.fetch(name, progress)
        try:
            if fetched.manifest.digest != identity.digest:  # re-published between the two steps
                identity = replace(identity, key=identity.key.rsplit("@", 1)[0] + "@" + fetched.manifest.digest,
                                   digest=fetched.manifest.digest, manifest=fetched.manifest)
            facts = inspect_adapter(fetched.path)
        except BaseException:
            fetched.release()
            raise
        return Materialized(identity, fetched.path, facts, fetched.transfer, fetched.release)

    def _local_digest(self, path: Path) -> str:
        """Digest of a local adapter directory, re-hashed only when a file's size, mtime or inode changes."""
        files = [path / f for f in REQUIRED_FILES]
        try:
            stamp = tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in (os.stat(f) for f in files))
        except FileNotFoundError:
            inspect_adapter(path)  # raises the precise error (not found, missing config, pickle-only ...)
            raise
        with self._lock:
            cached = self._local_digests.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._local_digests[path] = (stamp, digest)
        return digest
