"""`file:` image URLs, confined to the configured media folder (after resolving every symlink)."""

from __future__ import annotations

import asyncio
import os
import stat
import urllib.parse

from core.settings import ImageSettings

from .errors import IMAGE_FETCH_FAILED, IMAGE_TOO_LARGE, IMAGE_URL_REFUSED, INVALID_IMAGE_URL, ImageError, clip


async def read_media_file(url: str, policy: ImageSettings) -> bytes:
    """The bytes of a file: URL inside policy.media_dir; raises ImageError otherwise."""
    if policy.media_dir is None:
        raise ImageError("file: image URLs are not enabled on this server", IMAGE_URL_REFUSED)
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() != "file":
        raise ImageError("not a file: URL", INVALID_IMAGE_URL)
    if parts.netloc.lower() not in ("", "localhost"):
        raise ImageError("a file: URL must not name a host (use file:///path)", IMAGE_URL_REFUSED)
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise ImageError("a file: URL needs an absolute path, e.g. file:///images/cat.png", INVALID_IMAGE_URL)
    return await asyncio.to_thread(_read_inside, path, policy.media_dir, policy.max_bytes)


def _read_inside(path: str, media_dir: str, max_bytes: int) -> bytes:
    root = os.path.realpath(media_dir)
    real = os.path.realpath(path)
    if real != root and os.path.commonpath([root, real]) != root:
        raise ImageError(f"the file {clip(path)} is outside the media directory; reading it is not allowed",
                         IMAGE_URL_REFUSED)
    # O_NOFOLLOW: a symlink swapped in after the check is not followed; O_NONBLOCK: a FIFO cannot hang us.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise ImageError(f"there is no file {clip(path)} in the media directory", IMAGE_FETCH_FAILED) from None
    except OSError as exc:
        raise ImageError(f"the file {clip(path)} cannot be read ({exc.strerror})", IMAGE_FETCH_FAILED) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{clip(path)} is not a regular file", IMAGE_URL_REFUSED)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if info.st_size > max_bytes:
            raise ImageError(f"the file {clip(path)} is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
        try:
            data = f.read(max_bytes + 1)  # +1: notices a file that grew since fstat
        except OSError as exc:
            raise ImageError(f"the file {clip(path)} cannot be read ({exc.strerror})", IMAGE_FETCH_FAILED) from None
    if len(data) > max_bytes:
        raise ImageError(f"the file {clip(path)} is larger than {max_bytes} bytes", IMAGE_TOO_LARGE)
    return data
