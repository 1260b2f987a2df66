"""Recognise the four accepted image formats by their magic bytes; declared types are never trusted alone."""

from __future__ import annotations

from .errors import INVALID_IMAGE, ImageError

MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP", "gif": "GIF"}


def sniff_format(data: bytes) -> str | None:
    """"png", "jpeg", "webp" or "gif" from the leading bytes, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def require_format(data: bytes, declared: str | None = None) -> str:
    """The sniffed format, or an `invalid_image` error when the bytes are not (the declared) image type."""
    fmt = sniff_format(data)
    if fmt is None:
        if not data:
            raise ImageError("the image is empty (0 bytes)", INVALID_IMAGE)
        raise ImageError("the data is not a PNG, JPEG, WebP or GIF image", INVALID_IMAGE)
    if declared is not None:
        expected = MEDIA_TYPES.get(declared.lower())
        if expected != fmt:
            message = f"declared {declared.lower()} but the bytes are a {FORMAT_NAMES[fmt]} image"
            raise ImageError(message, INVALID_IMAGE)
    return fmt
