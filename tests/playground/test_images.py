"""Images: format sniffing, what an upload is, thumbnails, message building, the sample diagram."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from playground.client import image_part, user_message
from playground.images import data_url_bytes, human_bytes, load_image, sample_diagram, thumbnail_data_url
from wire.images import mime_type


def encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                           ("GIF", None), ("BMP", None)])
def test_mime_type(fmt, mime):
    """PNG, JPEG and WebP are recognised by their magic bytes; other formats are not."""
    assert mime_type(encoded(fmt)) == mime


def test_load_image_reads_the_header():
    """An upload's format and dimensions; bytes that are not an image keep None for both."""
    image = load_image("d.webp", encoded("WEBP", (300, 200)))
    assert (image.mime, image.width, image.height) == ("image/webp", 300, 200)
    assert image.describe() == f"d.webp: WEBP, 300×200 px, {human_bytes(image.size)}"
    junk = load_image("junk.png", b"not an image")
    assert (junk.mime, junk.width, junk.height) == (None, None, None)
    assert junk.describe() == "junk.png: unknown format, 12 bytes"


def test_thumbnail_is_a_small_png():
    """The thumbnail fits in 160 px and is a PNG data URL; undecodable bytes give none."""
    url = thumbnail_data_url(encoded("JPEG", (800, 400)))
    assert url is not None and url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(data_url_bytes(url))) as thumb:
        assert thumb.size == (160, 80)
    assert thumbnail_data_url(b"not an image") is None


def test_image_part_and_user_message():
    """Images are sent as data URLs before the text; an unknown format goes as bare base64 for the worker to judge."""
    png, gif = encoded("PNG"), encoded("GIF")
    assert image_part(png) == {"type": "image", "image": "data:image/png;base64," + base64.b64encode(png).decode()}
    assert image_part(gif) == {"type": "image", "image": base64.b64encode(gif).decode()}
    message = user_message("Describe.", image=png)
    assert message["role"] == "user"
    assert [p["type"] for p in message["content"]] == ["image", "text"]
    assert message["content"][1] == {"type": "text", "text": "Describe."}
    assert user_message("Hello") == {"role": "user", "content": "Hello"}


def test_sample_diagram():
    """The built-in sample is a PNG swim-lane diagram."""
    sample = sample_diagram()
    assert (sample.name, sample.mime, sample.width, sample.height) == ("sample-order-process.png", "image/png",
                                                                       1150, 420)


def test_human_bytes():
    """Sizes read as bytes, KiB or MiB."""
    assert [human_bytes(n) for n in (12, 2048, 5 * 1024 * 1024)] == ["12 bytes", "2.0 KiB", "5.0 MiB"]
