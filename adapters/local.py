"""The embedded default store: a local directory with one sub-directory per adapter name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from wire.errors import AdapterConflict, AdapterInvalid, AdapterNotFound

from .manifest import MANIFEST_FILE, FileEntry, Manifest, adapter_files, build_manifest, hash_file
from .refs import check_name, is_valid_name
from .store import AdapterStore, FetchedAdapter, Progress
from .validate import inspect_adapter


class LocalDirectoryStore(AdapterStore):
    """``root/<name>/`` holds the PEFT files and ``manifest.json``.

    Publishing copies into a staging directory inside ``root`` and renames it into place, so a reader never sees a
    half-written adapter. A directory copied in by hand without a manifest is still served: its manifest is computed
    (hashing its files) when it is read.
    """

    kind = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"local directory {self.root}"

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def _not_found(self, name: str) -> AdapterNotFound:
        # Clients are told the name; the directory is the server's layout, for the log and the CLI only.
        return AdapterNotFound(f"adapter {name!r} is not in the adapter store", detail=self.describe())

    def list(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        items = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and is_valid_name(entry.name):
                try:
                    items.append(self.manifest(entry.name))
                except (AdapterNotFound, AdapterInvalid):
                    continue  # not an adapter (or a broken one): `verify NAME` says why
        return items

    def manifest(self, name: str) -> Manifest:
        directory = self._dir(name)
        if not directory.is_dir():
            raise self._not_found(name)
        manifest_path = directory / MANIFEST_FILE
        if manifest_path.is_file():
            manifest = Manifest.from_json(manifest_path.read_bytes())
            if manifest.name != name:
                raise AdapterInvalid(f"{name}/{MANIFEST_FILE} names another adapter ({manifest.name!r})")
            return manifest
        return self._compute_manifest(name, directory)

    def _compute_manifest(self, name: str, directory: Path, progress: Progress | None = None) -> Manifest:
        facts = inspect_adapter(directory)
        files = {f: hash_file(directory / f) for f in adapter_files(facts)}
        created = _mtime_iso(directory / "adapter_model.safetensors")
        return build_manifest(name, facts, files, created=created)

    def fetch(self, name: str, progress: Progress | None = None) -> FetchedAdapter:
        manifest = self.manifest(name)
        directory = self._dir(name)
        for file, entry in manifest.files.items():
            path = directory / file
            if not path.is_file() or path.stat().st_size != entry.size:
                raise AdapterInvalid(f"{name}/{file} does not match its manifest (missing or resized)")
        return FetchedAdapter(path=directory, manifest=manifest)

    def publish(self, name: str, source: Path, *, replace: bool = False, progress: Progress | None = None) -> Manifest:
        check_name(name)
        facts = inspect_adapter(source)
        target = self._dir(name)
        if target.exists() and not replace:
            raise AdapterConflict(f"adapter {name!r} already exists in the store; push with --replace to overwrite it")
        self.root.mkdir(parents=True, exist_ok=True)
        files = list(adapter_files(facts))
        total = sum((Path(source) / f).stat().st_size for f in files)
        done = 0
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            entries: dict[str, FileEntry] = {}
            for file in files:
                shutil.copyfile(Path(source) / file, staging / file)
                entries[file] = hash_file(staging / file)
                done += entries[file].size
                if progress is not None:
                    progress("uploading", done, total)
            manifest = build_manifest(name, facts, entries)
            (staging / MANIFEST_FILE).write_text(manifest.to_json())
            _fsync_dir(staging)
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
                os.replace(target, trash / name)
                os.replace(staging, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def remove(self, name: str) -> None:
        target = self._dir(name)
        if not target.is_dir():
            raise self._not_found(name)
        trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.root))
        os.replace(target, trash / name)
        shutil.rmtree(trash, ignore_errors=True)

    def verify(self, name: str, progress: Progress | None = None) -> Manifest:
        manifest = self.manifest(name)
        directory = self._dir(name)
        total, done = manifest.size, 0
        for file, entry in manifest.files.items():
            path = directory / file
            if not path.is_file():
                raise AdapterInvalid(f"{name}/{file} is missing")
            actual = hash_file(path)
            if actual != entry:
                raise AdapterInvalid(
                    f"{name}/{file} does not match its manifest (sha256 {actual.sha256[:12]}…, "
                    f"expected {entry.sha256[:12]}…)"
                )
            done += entry.size
            if progress is not None:
                progress("verifying", done, total)
        inspect_adapter(directory)
        return manifest


def _mtime_iso(path: Path) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
