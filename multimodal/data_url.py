"""Inline images as `data:` URLs: only base64 payloads of the four accepted media types."""

from __future__ import annotations

import base64
import binascii
import string
import urllib.parse

from .errors import IMAGE_TOO_LARGE, INVALID_IMAGE_URL, ImageError, clip
from .sniff import MEDIA_TYPES

_ACCEPTED = ", ".join(MEDIA_TYPES)
_STRIP_WHITESPACE = str.maketrans("", "", string.whitespace)


def decode_data_url(url: str, max_bytes: int) -> tuple[str, bytes]:
    """(media type, bytes) of a `data:<type>[;param=value]*;base64,<payload>` URL; raises ImageError."""
    url = url.strip()
    if url[:5].lower() != "data:":
        raise ImageError("not a data URL (it must start with data:)", INVALID_IMAGE_URL)
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageError("the data URL has no comma between its media type and its payload", INVALID_IMAGE_URL)
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower()
    if len(params) < 2 or params[-1].lower() != "base64":
        raise ImageError("only base64 data URLs are supported, e.g. data:image/png;base64,...", INVALID_IMAGE_URL)
    if not media_type:
        raise ImageError(f"the data URL has no media type; use one of {_ACCEPTED}", INVALID_IMAGE_URL)
    if media_type not in MEDIA_TYPES:
        hint = " (write image/jpeg)" if media_type == "image/jpg" else ""
        raise ImageError(f"unsupported media type {clip(media_type)!r} in the data URL{hint}; use one of {_ACCEPTED}",
                         INVALID_IMAGE_URL)
    for extra in params[1:-1]:
        if "=" not in extra:
            raise ImageError(f"malformed data URL parameter {clip(extra)!r}", INVALID_IMAGE_URL)

    # Base64 of max_bytes bytes is at most `limit` characters. Whitespace (line wrapping) and %-escapes do not
    # count, so first refuse only what cannot fit even fully escaped, then check exactly after normalizing.
    limit = 4 * -(-max_bytes // 3)
    if len(payload) > 3 * limit:
        raise ImageError(f"the data URL's image is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
    if "%" in payload:
        payload = urllib.parse.unquote(payload)  # '%' is not base64, so unquoting is unambiguous
    payload = payload.translate(_STRIP_WHITESPACE)
    if len(payload) > limit:
        raise ImageError(f"the data URL's image is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
    if not payload:
        raise ImageError("the data URL has an empty payload", INVALID_IMAGE_URL)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"the data URL's base64 payload is invalid: {exc}", INVALID_IMAGE_URL) from None
    if not data:
        raise ImageError("the data URL has an empty payload", INVALID_IMAGE_URL)
    if len(data) > max_bytes:
        raise ImageError(f"the data URL's image is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
    return media_type, data
