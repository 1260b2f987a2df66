"""Format sniffing and decode_image: bounds before decoding, first frame, orientation, RGB, downscaling."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile

from multimodal.decode import decode_image
from multimodal.errors import ImageError
from multimodal.sniff import MEDIA_TYPES, require_format, sniff_format

from .imaging import (
    BLUE,
    GREEN,
    RED,
    animated_gif,
    close_to,
    encode,
    jpeg_with_orientation,
    png_bomb,
    rgba_png,
    solid,
    transparent_gif,
)

LIMIT = 40_000_000
NOISE = random.Random(7).randbytes(256)


def decode(data: bytes, budget: int = 1_000_000, limit: int = LIMIT) -> Image.Image:
    return decode_image(data, pixel_budget=budget, max_source_pixels=limit)


def decode_error(data: bytes, code: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode(data, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


@pytest.mark.parametrize(("fmt", "expected"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_sniff_the_four_formats(fmt, expected):
    assert sniff_format(solid(fmt)) == expected
    assert MEDIA_TYPES[f"image/{expected}"] == expected


@pytest.mark.parametrize("data", [b"", b"\x89PN", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"GIF88a", b"BM" + b"\x00" * 40,
                                  b"<svg xmlns='http://www.w3.org/2000/svg'/>", NOISE])
def test_sniff_rejects_everything_else(data):
    assert sniff_format(data) is None


def test_require_format_checks_the_declared_type():
    assert require_format(solid("JPEG"), "image/jpeg") == "jpeg"
    with pytest.raises(ImageError) as info:
        require_format(solid("JPEG"), "image/png")
    assert info.value.code == "invalid_image"
    assert info.value.message == "declared image/png but the bytes are a JPEG image"
    with pytest.raises(ImageError) as info:
        require_format(b"hello world")
    assert info.value.code == "invalid_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decode_each_format_to_rgb(fmt):
    img = decode(solid(fmt, (64, 48), GREEN))
    assert img.mode == "RGB" and img.size == (64, 48)
    assert close_to(img.getpixel((10, 10)), GREEN)


def test_downscale_keeps_aspect_and_budget():
    img = decode(solid("PNG", (400, 300)), budget=10_000)
    assert decode(solid("PNG", (400, 300)), budget=120_000).size == (400, 300)  # the whole source fits
    assert img.size[0] * img.size[1] <= 10_000
    assert abs(img.size[0] / img.size[1] - 4 / 3) < 0.05


@pytest.mark.parametrize(("size", "budget"), [((1000, 10), 50), ((10, 1000), 50), ((5000, 1), 7), ((3, 3), 8)])
def test_extreme_aspect_ratios_stay_within_budget(size, budget):
    img = decode(solid("PNG", size), budget=budget)
    assert 1 <= img.size[0] * img.size[1] <= budget


def test_never_upscales():
    assert decode(solid("PNG", (20, 10)), budget=10_000_000).size == (20, 10)


def test_large_jpeg_is_drafted_at_reduced_scale(monkeypatch):
    calls = []
    original = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft",
                        lambda self, mode, size: calls.append(size) or original(self, mode, size))
    img = decode(solid("JPEG", (2400, 1600), RED), budget=40_000)
    assert calls and img.size[0] * img.size[1] <= 40_000
    assert close_to(img.getpixel((5, 5)), RED)


def test_animated_gif_gives_the_first_frame():
    assert close_to(decode(animated_gif()).getpixel((5, 5)), RED, tolerance=10)


def test_transparency_is_composited_on_white():
    img = decode(rgba_png())
    assert img.getpixel((5, 2)) == (255, 255, 255)
    assert close_to(img.getpixel((5, 15)), BLUE, tolerance=5)
    gif = decode(transparent_gif())
    assert gif.getpixel((3, 3)) == (255, 255, 255)
    assert gif.getpixel((3, 12)) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.new("I;16", (8, 8), 32768)
    assert close_to(decode(encode(grey, "PNG")).getpixel((1, 1)), (128, 128, 128), tolerance=2)


@pytest.mark.parametrize(("orientation", "size", "top_left", "bottom_right"), [
    (1, (60, 40), RED, BLUE),
    (6, (40, 60), RED, BLUE),  # rotate 90 degrees clockwise: the left (red) half becomes the top
    (8, (40, 60), BLUE, RED),
    (3, (60, 40), BLUE, RED),
])
def test_exif_orientation_is_applied(orientation, size, top_left, bottom_right):
    img = decode(jpeg_with_orientation(orientation), budget=10_000)
    assert img.size == size  # the whole source (60x40 fits the budget), upright
    assert close_to(img.getpixel((2, 2)), top_left)
    assert close_to(img.getpixel((size[0] - 3, size[1] - 3)), bottom_right)


def test_bomb_is_refused_from_the_header_before_decoding(monkeypatch):
    bomb = png_bomb(8000, 8000)
    assert len(bomb) < 20_000  # tiny on the wire, 64 megapixels decoded

    def no_decoding(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    err = decode_error(bomb, "image_too_large")
    assert err.message == "the image is 8000x8000 pixels (64000000), more than the limit of 40000000"


def test_pillows_own_bomb_guard_is_mapped():
    err = decode_error(png_bomb(20000, 20000, valid_body=False), "image_too_large")
    assert "pixels" in err.message


def test_source_pixel_limit_is_configurable():
    decode_error(solid("PNG", (100, 100)), "image_too_large", limit=9_999)
    assert decode(solid("PNG", (100, 100)), limit=10_000).size == (100, 100)


def test_truncated_and_corrupt_data():
    jpeg = solid("JPEG", (300, 200))
    err = decode_error(jpeg[: len(jpeg) // 2], "invalid_image")
    assert err.message.startswith("the JPEG image is corrupt or truncated")
    png = solid("PNG", (300, 200))
    decode_error(png[: len(png) // 2], "invalid_image")
    decode_error(png[:20], "invalid_image")
    decode_error(png_bomb(100, 100, valid_body=False), "invalid_image")  # IDAT too short for the header


@pytest.mark.parametrize("data", [b"", NOISE, b"GIF89a" + NOISE[:32], encode(Image.new("RGB", (4, 4)), "BMP"),
                                  encode(Image.new("RGB", (4, 4)), "TIFF")])
def test_not_an_accepted_image(data):
    decode_error(data, "invalid_image")


def test_truncation_is_not_tolerated_globally():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
