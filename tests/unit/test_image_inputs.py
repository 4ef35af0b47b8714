"""decode_image: the one door untrusted image bytes pass through; ImageDecoder, a few at a time."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from hidream_service.image_inputs import CleanImage, ImageDecoder, ImageInputError, decode_image, sniff_format

#: PNG colour types (IHDR) and their channels.
GREY, RGB, RGBA = 0, 2, 6
CHANNELS = {GREY: 1, RGB: 3, RGBA: 4}


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, *, bit_depth: int = 8, colour_type: int = RGB) -> bytes:
    """A PNG whose header claims width x height, with a tiny (wrong) data chunk: a bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00")) + _chunk(b"IEND", b"")
    )


def black_png(width: int, height: int, *, bit_depth: int, colour_type: int) -> bytes:
    """A complete, all-zero PNG at any bit depth (Pillow writes no 16-bit colour PNG). All zeros
    compress to almost nothing: a 4096x4096 16-bit RGBA one is about 130 KB."""
    row = bytes(1 + width * CHANNELS[colour_type] * bit_depth // 8)  # filter byte 0, then the samples
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


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


def test_transparency_is_blended_onto_white_in_proportion() -> None:
    decoded = decode_image(encoded(Image.new("RGBA", (2, 2), (255, 0, 0, 128)), "PNG"))

    assert decoded.image.getpixel((0, 0)) == (255, 127, 127)


@pytest.mark.parametrize(
    ("bit_depth", "colour_type", "per_pixel"), [(16, RGBA, 8), (8, RGBA, 4), (16, RGB, 6), (8, RGB, 3), (16, GREY, 2)]
)
def test_the_decoded_size_counts_each_pixels_bytes_from_the_header(
    bit_depth: int, colour_type: int, per_pixel: int
) -> None:
    data = black_png(64, 32, bit_depth=bit_depth, colour_type=colour_type)

    decoded = decode_image(data, max_decoded_bytes=64 * 32 * per_pixel)  # exactly the budget: taken
    with pytest.raises(ImageInputError) as raised:
        decode_image(data, max_decoded_bytes=64 * 32 * per_pixel - 1)

    assert decoded.image.size == (64, 32)
    assert raised.value.status == 413
    assert f"{per_pixel} bytes a pixel" in raised.value.message


def test_a_sixteen_bit_rgba_image_at_the_pixel_limit_is_over_the_default_budget() -> None:
    """4096x4096 passes the pixel limit, but at 8 bytes a pixel it is 128 MiB decoded; the 8-bit
    image of the same size fits. Refused from the header: nothing is decoded."""
    with pytest.raises(ImageInputError) as raised:
        decode_image(png_header_only(4096, 4096, bit_depth=16, colour_type=RGBA))

    assert raised.value.status == 413
    assert "16 bits a channel" in raised.value.message
    assert "134217728 bytes decoded" in raised.value.message


class WatchedDecoder(ImageDecoder):
    """The real decoder, counting the decodes that run at the same moment."""

    def __init__(self, max_concurrent: int, release: threading.Event | None = None) -> None:
        super().__init__(max_concurrent=max_concurrent)
        self.release = release
        self.running = 0
        self.most_at_once = 0
        self.started = 0
        self._lock = threading.Lock()

    def _clean(self, data: bytes) -> CleanImage:
        with self._lock:
            self.running += 1
            self.started += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.release is not None:
                self.release.wait(10)
            else:
                time.sleep(0.05)  # long enough for every other caller to be waiting
            return super()._clean(data)
        finally:
            with self._lock:
                self.running -= 1


def test_no_more_than_the_bound_decode_at_once() -> None:
    decoder = WatchedDecoder(max_concurrent=2)
    data = encoded(Image.new("RGB", (64, 64)), "PNG")

    async def eight_at_once() -> list[CleanImage]:
        return await asyncio.gather(*(decoder.to_png(data) for _ in range(8)))

    cleaned = asyncio.run(eight_at_once())

    assert len(cleaned) == 8 and all(image.width == 64 for image in cleaned)
    assert decoder.most_at_once == 2


def test_a_caller_that_stops_waiting_keeps_its_slot_until_its_decode_ends() -> None:
    release = threading.Event()
    decoder = WatchedDecoder(max_concurrent=1, release=release)
    data = encoded(Image.new("RGB", (8, 8)), "PNG")

    async def scenario() -> tuple[int, int]:
        first = asyncio.create_task(decoder.to_png(data))
        while decoder.started == 0:
            await asyncio.sleep(0.01)
        first.cancel()  # its thread goes on decoding
        second = asyncio.create_task(decoder.to_png(data))
        await asyncio.sleep(0.2)
        started_while_busy = decoder.started
        release.set()
        await second
        return started_while_busy, decoder.most_at_once

    started_while_busy, most_at_once = asyncio.run(scenario())

    assert started_while_busy == 1  # the second waited for the first thread, not for its caller
    assert most_at_once == 1
