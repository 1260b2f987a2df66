"""file: image URLs: only inside the media folder, after symlinks, regular files within the size limit."""

from __future__ import annotations

import os

import pytest

from core.settings import ImageSettings

from .fetching import fails, fetch
from .imaging import solid

PNG = solid("PNG")


@pytest.fixture()
def media(tmp_path):
    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    (folder / "cat.png").write_bytes(PNG)
    (folder / "sub" / "two words.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    return folder


def policy(folder, **kwargs) -> ImageSettings:
    return ImageSettings(media_dir=str(folder), **kwargs)


def test_file_inside_the_media_dir(media):
    assert fetch(f"file://{media}/cat.png", policy(media)) == PNG
    assert fetch(f"file://localhost{media}/cat.png", policy(media)) == PNG
    assert fetch(f"file://{media}/sub/two%20words.png", policy(media)) == PNG


def test_dot_dot_escape_is_refused(media):
    err = fails("image_url_refused", f"file://{media}/../secret.png", policy(media))
    assert "outside the media directory" in err.message
    fails("image_url_refused", f"file://{media}/sub/%2e%2e/%2e%2e/secret.png", policy(media))


def test_symlink_escape_is_refused(media):
    os.symlink(media.parent / "secret.png", media / "link.png")
    fails("image_url_refused", f"file://{media}/link.png", policy(media))


def test_symlink_staying_inside_is_fine(media):
    os.symlink(media / "cat.png", media / "sub" / "alias.png")
    assert fetch(f"file://{media}/sub/alias.png", policy(media)) == PNG


def test_media_dir_reached_through_a_symlink(media, tmp_path):
    os.symlink(media, tmp_path / "linked-media")
    assert fetch(f"file://{media}/cat.png", policy(tmp_path / "linked-media")) == PNG


def test_not_configured():
    err = fails("image_url_refused", "file:///etc/hostname", ImageSettings())
    assert err.message == "file: image URLs are not enabled on this server"


def test_missing_file_and_directory(media):
    fails("image_fetch_failed", f"file://{media}/nope.png", policy(media))
    fails("image_url_refused", f"file://{media}/sub", policy(media))


def test_file_over_the_size_limit(media):
    err = fails("image_too_large", f"file://{media}/cat.png", policy(media, max_bytes=100))
    assert "larger than 100 bytes" in err.message


def test_remote_host_and_relative_paths(media):
    fails("image_url_refused", f"file://fileserver{media}/cat.png", policy(media))
    fails("invalid_image_url", "file:cat.png", policy(media))
