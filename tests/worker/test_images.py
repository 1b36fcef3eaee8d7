"""Image decoding and bounds: everything refused before the pixels are decoded."""

from __future__ import annotations

import base64
import io
import time
import tracemalloc

import pytest
from PIL import Image

from inference_worker.images import ImageLimits, decode_image
from wire.errors import ErrorCode, InputError

from ..helpers import image_b64, png_bomb


def code(value: str, limits: ImageLimits = ImageLimits()) -> ErrorCode:
    with pytest.raises(InputError) as info:
        decode_image(value, limits)
    return info.value.code


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt):
    """PNG, JPEG and WebP decode, as base64 and as data URLs."""
    b64 = image_b64((64, 48), fmt)
    img = decode_image(b64)
    assert (img.format, img.width, img.height, img.image.mode) == (fmt, 64, 48, "RGB")
    mime = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[fmt]
    assert decode_image(f"data:image/{mime};base64,{b64}").format == fmt


def test_transparent_png_is_flattened_on_white():
    """An RGBA image becomes RGB over a white background."""
    img = decode_image(image_b64((8, 8), "PNG", (0, 0, 0, 0), mode="RGBA"))
    assert img.image.getpixel((0, 0)) == (255, 255, 255)


def test_base64_with_line_breaks_is_accepted():
    """MIME-style wrapped base64 decodes."""
    b64 = image_b64((32, 32))
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    assert decode_image(wrapped).width == 32


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64!!", ErrorCode.INVALID_IMAGE),
        (base64.b64encode(b"hello world, not an image").decode(), ErrorCode.INVALID_IMAGE),
        ("", ErrorCode.INVALID_IMAGE),
        ("data:image/png,notbase64", ErrorCode.INVALID_IMAGE),
        ("data:text/html;base64,PGI+", ErrorCode.UNSUPPORTED_IMAGE),
        ("data:image/gif;base64," + base64.b64encode(b"GIF89a....").decode(), ErrorCode.UNSUPPORTED_IMAGE),
        ("data:nonsense", ErrorCode.INVALID_IMAGE),
    ],
)
def test_bad_payloads(value, expected):
    """Broken base64, non-images, non-base64 data URLs and unsupported MIME types get their own codes."""
    assert code(value) == expected


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported(fmt):
    """Real images in formats the worker does not take are unsupported_image."""
    assert code(image_b64((16, 16), fmt)) == ErrorCode.UNSUPPORTED_IMAGE


def test_truncated_image_is_invalid():
    """A PNG cut in half is invalid_image."""
    raw = base64.b64decode(image_b64((200, 200), "PNG", (1, 2, 3)))
    buf = io.BytesIO()
    Image.frombytes("RGB", (200, 200), bytes(range(256)) * 468 + bytes(192)).save(buf, "PNG")
    raw = buf.getvalue()
    assert code(base64.b64encode(raw[: len(raw) // 2]).decode()) == ErrorCode.INVALID_IMAGE


def test_oversized_payload_is_refused_before_decoding():
    """A payload over IMAGE_MAX_BYTES is image_too_large without base64-decoding it."""
    limits = ImageLimits(max_bytes=1000)
    assert code("A" * 4000, limits) == ErrorCode.IMAGE_TOO_LARGE
    assert code("data:image/png;base64," + "A" * 4000, limits) == ErrorCode.IMAGE_TOO_LARGE


def test_decompression_bomb_is_refused_from_the_header():
    """A tiny PNG claiming 100000x100000 pixels is refused fast and without allocating its pixels."""
    bomb = base64.b64encode(png_bomb()).decode()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert code(bomb) == ErrorCode.IMAGE_TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5 * 1024 * 1024


def test_pixel_limit_applies_to_real_images():
    """An image over IMAGE_MAX_SOURCE_PIXELS is refused."""
    assert code(image_b64((100, 100)), ImageLimits(max_source_pixels=9999)) == ErrorCode.IMAGE_TOO_LARGE


def test_extreme_aspect_ratio_is_refused():
    """An image more than 200:1 is invalid (the vision preprocessing cannot take it)."""
    assert code(image_b64((2010, 10))) == ErrorCode.INVALID_IMAGE
