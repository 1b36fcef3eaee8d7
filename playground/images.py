"""Images for the playground: what an upload is, a thumbnail for the history, a sample diagram to try.

The worker is the authority on what it accepts (format, size, pixels): the playground reads only what it needs to
show, and sends anything the person picked so that the worker's own message explains a refusal. A diagram source
(BPMN, Mermaid, Graphviz, PlantUML, SVG) is drawn as a PNG first (:func:`load_upload`, which blocks: :mod:`diagrams`),
and the picture remembers the source it came from.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from diagrams import DiagramError, DiagramRenderer, Rendered, kind_of, render
from wire.images import mime_type

THUMBNAIL_SIDE = 160
_MAX_THUMBNAIL_SOURCE_PIXELS = 40_000_000  # beyond this, decoding for a thumbnail is not worth it


class UploadError(Exception):
    """A file that cannot be used as a picture: a diagram source that cannot be drawn (``code`` says why)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code)
        self.message, self.code = message, code

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ImageInput:
    """An image picked for a run: its bytes and what can be told about it without trusting it."""

    name: str
    data: bytes
    mime: str | None  # image/png, image/jpeg, image/webp; None: not one of those (the worker will say why)
    width: int | None
    height: int | None
    # The diagram source this picture was drawn from: name, kind, sha256, bytes, renderer (None: a picture upload).
    source: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> str:
        kind = self.mime.removeprefix("image/").upper() if self.mime else "unknown format"
        dims = f"{self.width}×{self.height} px, " if self.width and self.height else ""
        if self.source is not None:
            return (f"{self.name}: {self.source['label']} source drawn by {self.source['renderer']} as a {kind}, "
                    f"{dims}{human_bytes(self.size)}")
        return f"{self.name}: {kind}, {dims}{human_bytes(self.size)}"

    def record(self) -> dict[str, Any]:
        """What the history keeps of the picture (the bytes are kept apart, by digest)."""
        fields: dict[str, Any] = {"name": self.name, "mime": self.mime, "bytes": self.size, "width": self.width,
                                  "height": self.height, "sha256": self.sha256,
                                  "thumbnail": thumbnail_data_url(self.data)}
        if self.source is not None:
            fields["source"] = self.source
        return fields


def load_image(name: str, data: bytes) -> ImageInput:
    """Describe uploaded bytes: format from the magic bytes, dimensions from the header (no decoding)."""
    width = height = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # not an image Pillow knows, truncated, a decompression bomb: the worker decides
        pass
    return ImageInput(name=name, data=data, mime=mime_type(data), width=width, height=height)


def is_diagram_source(name: str) -> bool:
    return kind_of(name) is not None


def from_rendered(name: str, rendered: Rendered) -> ImageInput:
    source = {"name": name, "kind": rendered.kind.value, "label": rendered.kind.label,
              "sha256": rendered.source_sha256, "bytes": rendered.source_bytes, "renderer": rendered.renderer}
    return ImageInput(name=name, data=rendered.png, mime="image/png", width=rendered.width, height=rendered.height,
                      source=source)


def load_upload(name: str, data: bytes, renderer: DiagramRenderer | None = None) -> ImageInput:
    """A picture as it is, or a diagram source drawn as a PNG (blocks; :class:`UploadError` if it cannot be drawn)."""
    if not is_diagram_source(name):
        return load_image(name, data)
    try:
        return from_rendered(name, render(data, name=name, renderer=renderer))
    except DiagramError as exc:
        raise UploadError(f"{name}: {exc}", exc.code) from None


def thumbnail_data_url(data: bytes, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small PNG of the image as a data URL (for the history and its exports); None if it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_THUMBNAIL_SOURCE_PIXELS:
                return None
            img.thumbnail((side, side))
            thumb = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            out = io.BytesIO()
            thumb.save(out, "PNG", optimize=True)
    except Exception:
        return None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:...;base64,`` URL."""
    return base64.b64decode(url.split(",", 1)[1])


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


SAMPLE_STEPS = [
    ("Customer", "Submit order"),
    ("Sales", "Check stock"),
    ("Sales", "Confirm order"),
    ("Warehouse", "Ship goods"),
    ("Accounting", "Send invoice"),
]


def sample_diagram() -> ImageInput:
    """A small swim-lane process diagram drawn here (for trying the playground without a file)."""
    lanes = list(dict.fromkeys(role for role, _ in SAMPLE_STEPS))
    font = ImageFont.load_default(size=15)
    lane_h, box_w, box_h, left = 100, 170, 56, 130
    width, height = left + len(SAMPLE_STEPS) * (box_w + 30) + 20, lane_h * len(lanes) + 20
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, lane in enumerate(lanes):
        top = 10 + i * lane_h
        draw.rectangle([10, top, width - 10, top + lane_h], outline="black")
        draw.text((18, top + lane_h // 2 - 8), lane, fill="black", font=font)
    centres = []
    for i, (role, step) in enumerate(SAMPLE_STEPS):
        x = left + i * (box_w + 30)
        y = 10 + lanes.index(role) * lane_h + (lane_h - box_h) // 2
        draw.rounded_rectangle([x, y, x + box_w, y + box_h], radius=10, outline="navy", width=2, fill="#e8f0ff")
        draw.text((x + 10, y + box_h // 2 - 8), f"{i + 1}. {step}", fill="black", font=font)
        centres.append((x, y, x + box_w, y + box_h // 2))
    for (_, _, x1, y1), (x2, y2, _, _) in itertools.pairwise(centres):
        mid = (x1 + x2) // 2
        y2c = y2 + box_h // 2
        draw.line([(x1, y1), (mid, y1), (mid, y2c), (x2, y2c)], fill="navy", width=2)
        draw.polygon([(x2, y2c), (x2 - 8, y2c - 5), (x2 - 8, y2c + 5)], fill="navy")
    out = io.BytesIO()
    img.save(out, "PNG")
    return load_image("sample-order-process.png", out.getvalue())
