"""The one exception type the image layer raises, so callers map failures to 400s without guessing."""

from __future__ import annotations

# Stable machine-readable codes; the HTTP layer copies them into the OpenAI-style error body.
INVALID_IMAGE_URL = "invalid_image_url"
IMAGE_URL_REFUSED = "image_url_refused"
IMAGE_FETCH_FAILED = "image_fetch_failed"
IMAGE_FETCH_TIMEOUT = "image_fetch_timeout"
IMAGE_TOO_LARGE = "image_too_large"
INVALID_IMAGE = "invalid_image"


def clip(text: str, limit: int = 100) -> str:
    """A client's string (a host, a path, a media type) as a message quotes it: its start and "…" if long."""
    return text if len(text) <= limit else text[:limit] + "…"


class ImageError(Exception):
    """A user-facing failure to load an image; `message` is safe to show the client verbatim."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        # Position in a batch (see ImageLoader.load_all), so the caller can name messages[i].content[j].
        self.index: int | None = None

    def with_index(self, index: int) -> ImageError:
        """A copy tagged with a batch position; copies, because one error may be shared by concurrent loads."""
        copy = ImageError(self.message, self.code)
        copy.index = index
        return copy

    def __repr__(self) -> str:
        return f"ImageError({self.message!r}, code={self.code!r}, index={self.index!r})"
