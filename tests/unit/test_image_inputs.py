"""decode_image: the one door untrusted image bytes pass through."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from hidream_service.image_inputs import ImageInputError, decode_image, sniff_format


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (wrong) data chunk: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_each_allowed_format_decodes_to_rgb(fmt: str) -> None:
    data = encoded(Image.new("RGB", (40, 30), (10, 200, 30)), fmt)

    decoded = decode_image(data)

    assert decoded.source_format == fmt.lower()
    assert (decoded.width, decoded.height) == (40, 30)
    assert decoded.image.mode == "RGB"


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("GIF", encoded(Image.new("RGB", (8, 8)), "GIF")),
        ("BMP", encoded(Image.new("RGB", (8, 8)), "BMP")),
        ("text", b"hello, this is not an image"),
        ("html", b"<html><body>404</body></html>"),
    ],
)
def test_other_formats_are_refused_by_their_magic_bytes(fmt: str, data: bytes) -> None:
    with pytest.raises(ImageInputError) as raised:
        decode_image(data)

    assert raised.value.status == 422
    assert "JPEG, PNG or WebP" in raised.value.message


def test_a_png_extension_cannot_smuggle_another_format() -> None:
    # A GIF body behind no PNG magic is refused even if a client labels it image/png.
    assert sniff_format(encoded(Image.new("RGB", (8, 8)), "GIF")) is None


@pytest.mark.parametrize(("side", "says"), [(6000, "6000x6000"), (50_000, "far more pixels")])
def test_a_header_claiming_too_many_pixels_is_a_413_before_decoding(side: int, says: str) -> None:
    bomb = png_header_only(side, side)  # up to 2.5 GP claimed in under 100 bytes

    with pytest.raises(ImageInputError) as raised:
        decode_image(bomb)

    assert raised.value.status == 413
    assert says in raised.value.message


def test_the_pixel_limit_is_configurable() -> None:
    data = encoded(Image.new("RGB", (100, 100)), "PNG")

    with pytest.raises(ImageInputError) as raised:
        decode_image(data, max_pixels=99 * 99)

    assert raised.value.status == 413


def test_a_truncated_image_is_a_422_not_a_crash() -> None:
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")

    with pytest.raises(ImageInputError) as raised:
        decode_image(data[: len(data) // 2])

    assert raised.value.status == 422
    assert "truncated or corrupt" in raised.value.message


def test_empty_bytes_are_a_422() -> None:
    with pytest.raises(ImageInputError) as raised:
        decode_image(b"")

    assert raised.value.status == 422


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(Image.new("RGB", (60, 20), (255, 0, 0)), "JPEG", exif=exif.tobytes())

    decoded = decode_image(data)

    assert (decoded.width, decoded.height) == (20, 60)


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))

    decoded = decode_image(encoded(image, "PNG"))

    assert decoded.image.getpixel((5, 5)) == (255, 255, 255)
    assert decoded.image.getpixel((0, 0)) == (255, 0, 0)


def test_a_sixteen_bit_greyscale_png_keeps_its_tones() -> None:
    image = Image.new("I;16", (4, 4), 32768)  # mid grey in 16 bits

    decoded = decode_image(encoded(image, "PNG"))

    red, green, blue = decoded.image.getpixel((0, 0))
    assert red == green == blue == 128


def test_an_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)

    decoded = decode_image(buffer.getvalue())

    assert decoded.image.getpixel((8, 8)) == (255, 0, 0)
