"""Test images made in memory: every format, transparency, EXIF orientation, animation, crafted bombs."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 40)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def solid(fmt: str, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = GREEN) -> bytes:
    return encode(Image.new("RGB", size, color), fmt)


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def two_halves(size: tuple[int, int] = (60, 40)) -> Image.Image:
    """Left half red, right half blue: any rotation or flip is visible."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    return img


def jpeg_with_orientation(orientation: int, size: tuple[int, int] = (60, 40)) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(two_halves(size), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def rgba_png() -> bytes:
    """Top half fully transparent (black underneath), bottom half opaque blue."""
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((20, 20, 220, 255), (0, 10, 20, 20))
    return encode(img, "PNG")


def transparent_gif() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 8, 16, 16))
    return encode(img, "GIF", transparency=0)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, *, valid_body: bool = True) -> bytes:
    """A 1-bit greyscale PNG that is tiny on the wire but width*height pixels once decoded.

    With valid_body=False the IDAT is a stub: only the header is meant to be read.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if valid_body:
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
        compressor = zlib.compressobj(9)
        body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))
