"""Decode and bound client images before any pixels are touched.

The order matters: the encoded size is checked before base64 decoding, the format is sniffed from the magic bytes,
and the dimensions are read from the header before the pixels are decoded, so a decompression bomb (a tiny file
that claims huge dimensions) is refused without allocating its pixels. This module is blocking CPU work: the
server calls it from a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from wire.errors import ImageTooLarge, InvalidImage, UnsupportedImage
from wire.images import SUPPORTED_FORMATS, sniff_format
from wire.limits import IMAGE_MAX_BYTES

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.ASCII)
_MIME_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
MAX_ASPECT_RATIO = 200  # the Qwen vision preprocessing refuses more


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = IMAGE_MAX_BYTES
    max_source_pixels: int = 36_000_000


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully loaded
    format: str
    width: int
    height: int
    size_bytes: int


def decode_payload(value: str, max_bytes: int) -> bytes:
    """base64 or a ``data:`` URL → bytes, refusing oversized payloads before decoding them."""
    payload = value
    if value.startswith("data:"):
        match = _DATA_URL.match(value[:256])
        if match is None:
            raise InvalidImage("malformed data URL: expected data:image/<png|jpeg|webp>;base64,<data>")
        mime = (match.group("mime") or "").lower()
        if mime not in _MIME_FORMATS:
            raise UnsupportedImage(f"unsupported image type {mime or '(none)'!r}; send PNG, JPEG or WebP")
        if ";base64" not in match.group("params").lower():
            raise InvalidImage("data URLs must be base64-encoded (data:image/...;base64,...)")
        payload = value[match.end() :]
    # 4 base64 characters carry 3 bytes: refuse on the encoded length, before allocating the decoded bytes.
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise ImageTooLarge(f"image is larger than the limit of {max_bytes} bytes")
    if any(c.isspace() for c in payload[:4096]) or any(c.isspace() for c in payload[-4096:]):
        payload = "".join(payload.split())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image is not valid base64") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    if not data:
        raise InvalidImage("image is empty")
    return data


def decode_image(value: str, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode a client image into a loaded RGB PIL image, or raise :class:`InputError` with a precise code."""
    data = decode_payload(value, limits.max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage("the bytes are not a PNG, JPEG or WebP image")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not supported; send PNG, JPEG or WebP")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLarge("image dimensions exceed the decompression-bomb limit") from None
        except Exception as exc:  # PIL raises many types for broken headers
            raise InvalidImage(f"cannot read the {fmt} header: {exc}") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImage(f"image has no pixels ({width}x{height})")
        if width * height > limits.max_source_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_source_pixels}"
            )
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise InvalidImage(f"image aspect ratio {width}x{height} is over {MAX_ASPECT_RATIO}:1")
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLarge("image dimensions exceed the decompression-bomb limit") from None
        except Exception as exc:
            raise InvalidImage(f"cannot decode the {fmt} image: {exc}") from None
    return DecodedImage(_to_rgb(image), fmt, width, height, len(data))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
