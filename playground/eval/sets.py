"""The evaluation set: uploaded files (images, diagram sources, references, zips of them) read into its items.

A set is images (PNG, JPEG, WebP) or diagram sources (BPMN, Mermaid, Graphviz, PlantUML, SVG: drawn as PNG by
:mod:`diagrams` when the set is loaded), loose or in a zip, each optionally with a reference description: a ``.md``
or ``.txt`` file with the same stem (``order.png`` + ``order.md``; in a zip, in the same folder). Files that cannot be
used are left out with a reason; a set that cannot be used at all (not a zip, too many items, too large) raises
:class:`SetError`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from diagrams import SUFFIXES as DIAGRAM_SUFFIXES
from diagrams import describe_kinds

from ..images import ImageInput, UploadError, human_bytes, load_upload

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", *DIAGRAM_SUFFIXES)  # pictures, and sources drawn as pictures
REFERENCE_SUFFIXES = (".md", ".txt")
REFERENCE_MAX_BYTES = 1024 * 1024
NOT_A_DIAGRAM = f"PNG, JPEG, WebP, or a source: {describe_kinds()}"


class SetError(Exception):
    """The set as a whole cannot be used (not a zip, too many items, too large)."""


@dataclass(frozen=True)
class SetItem:
    """A diagram of the set, and its reference description if it has one."""

    name: str
    image: ImageInput
    reference: str | None = None
    reference_name: str | None = None


@dataclass
class LoadedSet:
    items: list[SetItem]
    problems: list[str]  # files that were left out, and why

    @property
    def with_reference(self) -> int:
        return sum(1 for i in self.items if i.reference is not None)


def _stem(name: str) -> str:
    path = PurePosixPath(name)
    return str(path.with_suffix("")).casefold()


def _files_of(name: str, data: bytes, max_bytes: int, problems: list[str]) -> list[tuple[str, bytes]]:
    """A zip's members (bounded before anything is read), or the file itself."""
    if not name.casefold().endswith(".zip"):
        return [(name, data)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SetError(f"{name} is not a zip archive") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise SetError(f"{name} holds {human_bytes(total)}, more than the limit of {human_bytes(max_bytes)} "
                           f"(PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES)")
        out = []
        for member in members:
            parts = PurePosixPath(member.filename).parts
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue  # macOS resource forks, hidden files
            if not member.filename.casefold().endswith(IMAGE_SUFFIXES + REFERENCE_SUFFIXES):
                problems.append(f"{member.filename}: not a diagram ({NOT_A_DIAGRAM}) or a reference (.md, .txt)")
                continue
            with archive.open(member) as f:
                content = f.read(member.file_size + 1)
            if len(content) != member.file_size:  # a header that lies about the size (a zip bomb)
                raise SetError(f"{name}: {member.filename} is not the size its header says")
            out.append((member.filename, content))
        return out


def load_set(files: Sequence[tuple[str, bytes]], *, max_items: int = 200, max_bytes: int = 256 * 1024 * 1024,
             image_max_bytes: int | None = None,
             load: Callable[[str, bytes], ImageInput] = load_upload) -> LoadedSet:
    """Read uploaded files (images, diagram sources, references, zips of them) into the items of a set, by name.

    A reference pairs with the image of the same stem. ``load`` reads a picture or draws a source (it blocks: call
    this on a thread from an event loop). Files that cannot be used are left out with a reason in ``problems``; a set
    that cannot be used at all raises :class:`SetError`.
    """
    problems: list[str] = []
    total = sum(len(data) for _, data in files)
    if total > max_bytes:
        raise SetError(f"the files hold {human_bytes(total)}, more than the limit of {human_bytes(max_bytes)} "
                       f"(PLAYGROUND_EVAL_MAX_ARCHIVE_BYTES)")
    images: dict[str, tuple[str, bytes]] = {}
    references: dict[str, tuple[str, bytes]] = {}
    for name, data in files:
        for member, content in _files_of(name, data, max_bytes, problems):
            folded = member.casefold()
            if not folded.endswith(IMAGE_SUFFIXES + REFERENCE_SUFFIXES):
                problems.append(f"{member}: not a diagram ({NOT_A_DIAGRAM}), a reference (.md, .txt) or a zip")
                continue
            target = images if folded.endswith(IMAGE_SUFFIXES) else references
            if _stem(member) in target:
                problems.append(f"{member}: another file has the same name; left out")
                continue
            target[_stem(member)] = (member, content)
    if len(images) > max_items:
        raise SetError(f"the set has {len(images)} diagrams; at most {max_items} (PLAYGROUND_EVAL_MAX_ITEMS)")
    items = []
    for stem, (name, data) in sorted(images.items(), key=lambda kv: kv[1][0]):
        try:
            image = load(name, data)
        except UploadError as exc:
            problems.append(f"{exc}; left out")
            continue
        if image.mime is None:
            problems.append(f"{name}: not a PNG, JPEG or WebP image; left out")
            continue
        if image_max_bytes is not None and image.size > image_max_bytes:
            problems.append(f"{name}: {human_bytes(image.size)}, over the worker's limit of "
                            f"{human_bytes(image_max_bytes)}; left out")
            continue
        reference = reference_name = None
        if stem in references:
            reference_name, raw = references.pop(stem)
            if len(raw) > REFERENCE_MAX_BYTES:
                problems.append(f"{reference_name}: over {human_bytes(REFERENCE_MAX_BYTES)}; scored without it")
            else:
                reference = raw.decode("utf-8", errors="replace")
        items.append(SetItem(name, image, reference, reference_name if reference is not None else None))
    for name, _ in references.values():
        problems.append(f"{name}: a reference without a diagram of the same name")
    return LoadedSet(items, problems)

