"""Safe extraction of an adapter archive (the ``weights.zip`` teams export).

Refused before anything is written: absolute names, ``..`` segments, drive letters, symlinks, more than
``max_members`` entries, more than ``max_total_bytes`` uncompressed, or a member that expands more than
``max_ratio`` times (zip bombs). While extracting, the bytes actually written are counted too, so a member that
lies about its size is stopped at its declared size.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from wire.errors import AdapterForbidden, AdapterInvalid

from .refs import safe_join
from .validate import CONFIG_FILE

GiB = 1024**3
_IGNORED = ("__MACOSX/", ".DS_Store")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 1000
    max_total_bytes: int = 8 * GiB
    max_ratio: int = 200


def extract_adapter(archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Extract ``archive`` into ``dest`` and return the directory inside it that holds ``adapter_config.json``."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AdapterInvalid(f"{archive.name} is not a readable zip archive: {exc}") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not any(x in m.filename for x in _IGNORED)]
        if len(members) > limits.max_members:
            raise AdapterForbidden(f"{archive.name} has {len(members)} entries (limit {limits.max_members})")
        total = 0
        for m in members:
            if stat.S_ISLNK(m.external_attr >> 16):
                raise AdapterForbidden(f"{archive.name}: member {m.filename!r} is a symbolic link")
            safe_join(dest, m.filename)  # raises on absolute paths, '..' and drive letters
            if m.compress_size and m.file_size / m.compress_size > limits.max_ratio and m.file_size > 1024 * 1024:
                raise AdapterForbidden(
                    f"{archive.name}: member {m.filename!r} expands {m.file_size // max(m.compress_size, 1)}× "
                    f"(limit {limits.max_ratio}×): refusing a possible zip bomb"
                )
            total += m.file_size
        if total > limits.max_total_bytes:
            raise AdapterForbidden(f"{archive.name} expands to {total} bytes (limit {limits.max_total_bytes})")
        for m in members:
            target = safe_join(dest, m.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with zf.open(m) as src, target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > m.file_size:
                        raise AdapterForbidden(f"{archive.name}: member {m.filename!r} is larger than it declares")
                    out.write(chunk)
    configs = sorted(p.parent for p in dest.rglob(CONFIG_FILE))
    if not configs:
        raise AdapterInvalid(f"{archive.name} holds no {CONFIG_FILE}")
    if len(configs) > 1:
        found = ", ".join(str(c.relative_to(dest)) or "." for c in configs)
        raise AdapterInvalid(f"{archive.name} holds several adapters ({found}); publish them one at a time")
    return configs[0]
