"""decode_data_url: base64 data URLs of the four image types, strictly parsed and bounded."""

from __future__ import annotations

import base64
import time

import pytest

from multimodal.data_url import decode_data_url
from multimodal.errors import ImageError

from .imaging import solid

PNG = solid("PNG")
B64 = base64.b64encode(PNG).decode()
LIMIT = 20 * 1024 * 1024


def refused(url: str, code: str = "invalid_image_url", max_bytes: int = LIMIT) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_data_url(url, max_bytes)
    assert info.value.code == code, info.value.message
    return info.value


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg", "image/webp", "image/gif"])
def test_accepted_media_types(media_type):
    assert decode_data_url(f"data:{media_type};base64,{B64}", LIMIT) == (media_type, PNG)


def test_case_insensitive_and_surrounding_space():
    assert decode_data_url(f"  DATA:Image/PNG;BASE64,{B64}\n", LIMIT) == ("image/png", PNG)


def test_extra_parameters_are_tolerated():
    assert decode_data_url(f"data:image/png;charset=utf-8;name=a.png;base64,{B64}", LIMIT)[1] == PNG


def test_whitespace_inside_the_payload_is_ignored():
    wrapped = "\r\n".join(B64[i:i + 76] for i in range(0, len(B64), 76))
    assert decode_data_url(f"data:image/png;base64,{wrapped}", LIMIT)[1] == PNG
    assert decode_data_url(f"data:image/png;base64, {B64[:8]} \t{B64[8:]}", LIMIT)[1] == PNG


def test_percent_escaped_payload():
    escaped = B64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert decode_data_url(f"data:image/png;base64,{escaped}", LIMIT)[1] == PNG


def test_image_jpg_is_not_accepted_and_the_message_says_what_is():
    err = refused(f"data:image/jpg;base64,{B64}")
    assert "'image/jpg'" in err.message and "write image/jpeg" in err.message
    assert "image/png, image/jpeg, image/webp, image/gif" in err.message


@pytest.mark.parametrize("media_type", ["text/plain", "image/svg+xml", "image/bmp", "application/octet-stream"])
def test_other_media_types(media_type):
    err = refused(f"data:{media_type};base64,{B64}")
    assert media_type in err.message


@pytest.mark.parametrize(("url", "words"), [
    (f"data:;base64,{B64}", "no media type"),
    (f"data:base64,{B64}", "only base64"),
    (f"data:image/png,{B64}", "only base64"),
    (f"data:image/png;base64;{B64}", "no comma"),
    ("data:image/png;base64,", "empty payload"),
    ("data:image/png;base64,  \n ", "empty payload"),
    ("data:image/png;base64,iVBORw0KGgo*", "base64 payload is invalid"),
    ("data:image/png;base64,iVBORw0KGgo", "base64 payload is invalid"),  # bad padding
    ("data:image/png;base64,iVBORw0KGgoé=", "base64 payload is invalid"),
    (f"data:image/png;oops;base64,{B64}", "malformed data URL parameter"),
    (f"https://example.com/{B64}", "not a data URL"),
])
def test_malformed(url, words):
    assert words in refused(url).message


def test_decoded_size_over_the_limit():
    err = refused(f"data:image/png;base64,{B64}", "image_too_large", max_bytes=len(PNG) - 1)
    assert err.message == f"the data URL's image is larger than {len(PNG) - 1} bytes"
    assert decode_data_url(f"data:image/png;base64,{B64}", len(PNG))[1] == PNG


def test_huge_payload_is_refused_before_decoding():
    payload = "A" * (50 * 1024 * 1024)
    started = time.monotonic()
    refused(f"data:image/png;base64,{payload}", "image_too_large", max_bytes=1024)
    assert time.monotonic() - started < 0.5
