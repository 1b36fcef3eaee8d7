"""The manifest written beside every published adapter: each file's size and sha256, the LoRA facts, a digest.

The digest covers file names, sizes and hashes only (not the adapter's name or publish time), so publishing the
same files twice gives the same digest and any changed byte gives a new one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire.errors import AdapterInvalid

from .validate import AdapterFacts

MANIFEST_FILE = "manifest.json"
CHUNK = 1024 * 1024


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal[1] = 1
    name: str
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: dict[str, FileEntry]
    base_model: str | None = None
    rank: int
    alpha: float
    target_modules: list[str]
    peft_version: str | None = None
    created: str

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise AdapterInvalid(f"{MANIFEST_FILE} is invalid: {exc.errors(include_url=False)[0]['msg']}") from None


def digest_of(files: dict[str, FileEntry]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name].size}\0{files[name].sha256}\n".encode())
    return h.hexdigest()


def hash_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return FileEntry(size=size, sha256=h.hexdigest())


def build_manifest(name: str, facts: AdapterFacts, files: dict[str, FileEntry], created: str | None = None) -> Manifest:
    return Manifest(
        name=name,
        digest=digest_of(files),
        files=dict(sorted(files.items())),
        base_model=facts.base_model,
        rank=facts.rank,
        alpha=facts.alpha,
        target_modules=facts.target_modules,
        peft_version=facts.peft_version,
        created=created or datetime.now(UTC).isoformat(timespec="seconds"),
    )


def adapter_files(facts: AdapterFacts) -> Iterable[str]:
    """The files of an adapter that are published: the config, the safetensors weights, optional extras."""
    from .validate import REQUIRED_FILES

    return (*REQUIRED_FILES, *facts.extra_files)
