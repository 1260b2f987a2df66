"""Bytes to a bounded RGB picture: header checks before decoding, first frame, EXIF orientation, downscale.

Blocking and CPU-bound; callers run it in a worker thread.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from .errors import IMAGE_TOO_LARGE, INVALID_IMAGE, ImageError
from .sniff import FORMAT_NAMES, sniff_format

_FORMATS = ["PNG", "JPEG", "WEBP", "GIF"]
# EXIF orientation tag value -> the transpose that shows the picture upright.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Pillow signals bad data with any of these; all of them mean "not a usable image" to the client.
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError)


def decode_image(data: bytes, *, pixel_budget: int, max_source_pixels: int) -> Image.Image:
    """An RGB image with width*height <= pixel_budget (never upscaled); raises ImageError."""
    if pixel_budget < 1:
        raise ValueError("pixel_budget must be positive")
    try:
        return _decode(data, pixel_budget, max_source_pixels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image has more than {max_source_pixels} pixels", IMAGE_TOO_LARGE) from None
    except Image.UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt is None:
            raise ImageError("the data is not a PNG, JPEG, WebP or GIF image", INVALID_IMAGE) from None
        raise ImageError(f"the {FORMAT_NAMES[fmt]} image is corrupt or truncated", INVALID_IMAGE) from None
    except _PILLOW_ERRORS as exc:
        fmt = sniff_format(data)
        what = f"the {FORMAT_NAMES[fmt]} image" if fmt else "the image"
        raise ImageError(f"{what} is corrupt or truncated ({_short(exc)})", INVALID_IMAGE) from None


def _decode(data: bytes, pixel_budget: int, max_source_pixels: int) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"the image has no pixels ({width}x{height})", INVALID_IMAGE)
        if width * height > max_source_pixels:
            raise ImageError(
                f"the image is {width}x{height} pixels ({width * height}), more than the limit of "
                f"{max_source_pixels}", IMAGE_TOO_LARGE)
        if img.format == "JPEG" and width * height > 4 * pixel_budget:
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale, far cheaper than decoding in full and shrinking.
            img.draft("RGB", _fit((width, height), pixel_budget))
        img.seek(0)  # animated GIF/WebP/APNG: the first frame only (cheap; counting frames is not)
        img.load()
        orientation = _orientation(img)
        rgb = _to_rgb(img)
    rgb = _shrink(rgb, pixel_budget)
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])  # after shrinking: transposing fewer pixels
    return rgb


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - broken EXIF must not sink an otherwise fine picture
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (a model sees black backgrounds as content)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")  # convert("RGB") would clip to white
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def _fit(size: tuple[int, int], pixel_budget: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio and at most pixel_budget pixels (never larger than size)."""
    width, height = size
    if width * height <= pixel_budget:
        return size
    scale = math.sqrt(pixel_budget / (width * height))
    new_w, new_h = math.floor(width * scale), math.floor(height * scale)
    # At most one edge can round to zero (their product is pixel_budget >= 1); give the other the rest.
    if new_w < 1:
        new_w, new_h = 1, min(height, pixel_budget)
    elif new_h < 1:
        new_w, new_h = min(width, pixel_budget), 1
    return new_w, new_h


def _shrink(img: Image.Image, pixel_budget: int) -> Image.Image:
    target = _fit(img.size, pixel_budget)
    if target == img.size:
        return img
    return img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
