"""Adapter references: what a client may put in ``adapter_path``, parsed and checked before anything is touched.

A reference is one of
- a store name (``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$``): the configured adapter store;
- ``s3://bucket/prefix``: an adapter in an allowed bucket of the S3/MinIO store;
- an absolute local path that resolves (symlinks followed) inside one of the allowed local roots.
Anything else is refused with ``adapter_forbidden`` and no store or file-system call is made for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wire.errors import AdapterForbidden

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rule for bucket names


def is_valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and name not in (".", "..") and not name.endswith(".")


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise AdapterForbidden(f"invalid adapter name {name[:140]!r}: names must match {NAME_PATTERN}")
    return name


@dataclass(frozen=True)
class StoreRef:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class S3Ref:
    bucket: str
    prefix: str  # no leading or trailing slash

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class LocalRef:
    path: Path  # resolved, inside an allowed root

    def __str__(self) -> str:
        return str(self.path)


AdapterRef = StoreRef | S3Ref | LocalRef


def parse_ref(
    value: str, *, local_roots: Sequence[Path] = (), allowed_buckets: Sequence[str] | None = None
) -> AdapterRef:
    """Parse and authorise an adapter reference. Raises :class:`AdapterForbidden`; never touches a store.

    Local paths are resolved (following symlinks) and must stay inside one of ``local_roots``; the check is on the
    real path, so ``..`` segments and symlinks that point out of a root are refused. ``allowed_buckets`` is None
    when no S3 store is configured.
    """
    if "\x00" in value:
        raise AdapterForbidden("adapter reference contains a NUL byte")
    if value.startswith("s3://"):
        return _parse_s3(value, allowed_buckets)
    if _SCHEME.match(value):
        scheme = value.split("://", 1)[0]
        raise AdapterForbidden(f"adapter references with scheme {scheme!r}:// are not allowed; use s3:// or a name")
    if os.path.isabs(value):
        return LocalRef(_inside_roots(value, local_roots))
    if is_valid_name(value):
        return StoreRef(value)
    raise AdapterForbidden(
        f"{value[:140]!r} is neither an adapter name ({NAME_PATTERN}) nor an absolute path under ADAPTER_LOCAL_ROOTS"
    )


def _parse_s3(value: str, allowed_buckets: Sequence[str] | None) -> S3Ref:
    if allowed_buckets is None:
        raise AdapterForbidden("s3:// references need an S3 store (set MINIO_ENDPOINT)")
    rest = value[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not S3_BUCKET.match(bucket):
        raise AdapterForbidden(f"invalid bucket name {bucket[:70]!r}")
    if bucket not in allowed_buckets:
        raise AdapterForbidden(f"bucket {bucket!r} is not in MINIO_ALLOWED_BUCKETS")
    if not prefix:
        raise AdapterForbidden("s3:// reference needs a prefix: s3://bucket/adapter-name")
    parts = PurePosixPath(prefix).parts
    if any(p in (".", "..") or not p for p in prefix.split("/")) or any(not is_valid_name(p) for p in parts):
        raise AdapterForbidden(f"invalid S3 prefix {prefix[:140]!r}: segments must match {NAME_PATTERN}")
    return S3Ref(bucket, prefix)


def _inside_roots(value: str, roots: Sequence[Path]) -> Path:
    if not roots:
        raise AdapterForbidden("local adapter paths are not allowed: ADAPTER_LOCAL_ROOTS is empty")
    candidate = Path(os.path.realpath(value))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if candidate == real_root or real_root in candidate.parents:
            return candidate
    raise AdapterForbidden(f"{value[:200]!r} is outside ADAPTER_LOCAL_ROOTS")


def safe_join(root: Path, relative: str) -> Path:
    """Join an untrusted relative path (an object key, a zip member) onto ``root``, refusing escapes."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")) or os.path.isabs(relative):
        raise AdapterForbidden(f"unsafe path {relative[:200]!r}")
    segments = relative.replace("\\", "/").split("/")
    if any(p in ("..", ".", "") for p in segments) or any(":" in p for p in segments):
        raise AdapterForbidden(f"unsafe path {relative[:200]!r}")
    target = (root / Path(*segments)).resolve()
    real_root = root.resolve()
    if target != real_root and real_root not in target.parents:
        raise AdapterForbidden(f"path {relative[:200]!r} escapes its directory", detail=str(root))
    return target
