"""ImageLoader: data and fetched images, the content-addressed cache, shared decodes, batches."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import pytest

import multimodal.loader as loader_module
from core.settings import ImageSettings
from multimodal.errors import ImageError
from multimodal.loader import ImageLoader, LoadedImage

from .conftest import run
from .imaging import GREEN, RED, close_to, data_url, solid
from .origin import IMAGE

POLICY = ImageSettings(private_hosts=("127.0.0.1",), fetch_timeout_s=5.0)
PNG = solid("PNG", (80, 60), GREEN)
JPEG = solid("JPEG", (80, 60), RED)


def load(loader: ImageLoader, url: str, budget: int = 1_000_000) -> LoadedImage:
    return run(loader.load(url, budget))


def load_error(loader: ImageLoader, url: str, code: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        load(loader, url)
    assert info.value.code == code, info.value.message
    return info.value


def test_data_url_image():
    loaded = load(ImageLoader(POLICY), data_url(PNG), budget=1200)
    assert loaded.digest == f"{hashlib.sha256(PNG).hexdigest()}:1200"
    assert loaded.image.mode == "RGB" and loaded.image.size == (40, 30)
    assert close_to(loaded.image.getpixel((1, 1)), GREEN)
    assert load(ImageLoader(POLICY), data_url(PNG)).image.size == (80, 60)  # the source's size: never upscaled


def test_declared_type_must_match_the_bytes():
    err = load_error(ImageLoader(POLICY), data_url(JPEG, "image/png"), "invalid_image")
    assert err.message == "declared image/png but the bytes are a JPEG image"


def test_data_url_that_is_not_an_image():
    load_error(ImageLoader(POLICY), data_url(b"hello, world", "image/png"), "invalid_image")


def test_fetched_image_is_judged_by_its_bytes(origin):
    loader = ImageLoader(POLICY)
    assert load(loader, origin.url("/mislabelled")).image.size == (40, 30)  # served as text/html
    err = load_error(loader, origin.url("/text"), "invalid_image")
    assert err.message == f"the content at {origin.url('/text')} is not a PNG, JPEG, WebP or GIF image"


def test_fetch_errors_pass_through(origin):
    load_error(ImageLoader(ImageSettings()), origin.url("/image.png"), "image_url_refused")
    load_error(ImageLoader(POLICY), origin.url("/status/404"), "image_fetch_failed")


def test_resolver_is_used(origin):
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    loader = ImageLoader(ImageSettings(private_hosts=("img.example.test",)), resolve=resolve)
    assert load(loader, origin.url("/image.png", host="img.example.test")).image.size == (40, 30)


def test_cache_hits_skip_decoding(origin, monkeypatch):
    decodes = []
    real = loader_module.decode_image
    monkeypatch.setattr(loader_module, "decode_image", lambda *a, **k: decodes.append(1) or real(*a, **k))
    loader = ImageLoader(POLICY)
    first = load(loader, data_url(IMAGE))
    again = load(loader, origin.url("/image.png"))  # same bytes from another source: same key
    assert again is first
    assert load(loader, data_url(IMAGE), budget=100).digest.endswith(":100")  # another budget: another entry
    assert len(decodes) == 2
    assert loader.stats() == {"hits": 1, "misses": 2, "shared": 0, "entries": 2}


def test_cache_is_lru_bounded():
    loader = ImageLoader(ImageSettings(cache_entries=2))
    images = [data_url(solid("PNG", (8 + i, 8))) for i in range(3)]
    for url in images:
        load(loader, url)
    load(loader, images[2])
    load(loader, images[0])  # evicted when the third arrived
    assert loader.stats() == {"hits": 1, "misses": 4, "shared": 0, "entries": 2}


def test_cache_can_be_disabled():
    loader = ImageLoader(ImageSettings(cache_entries=0))
    load(loader, data_url(PNG))
    load(loader, data_url(PNG))
    assert loader.stats()["hits"] == 0 and loader.stats()["entries"] == 0


def test_failures_are_not_cached():
    loader = ImageLoader(POLICY)
    bad = data_url(PNG[: len(PNG) // 2])
    load_error(loader, bad, "invalid_image")
    load_error(loader, bad, "invalid_image")
    assert loader.stats()["entries"] == 0


def test_concurrent_loads_share_one_decode(monkeypatch):
    decodes = []
    gate = threading.Event()
    real = loader_module.decode_image

    def slow_decode(*args, **kwargs):
        decodes.append(1)
        gate.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(loader_module, "decode_image", slow_decode)
    loader = ImageLoader(POLICY)

    async def body():
        tasks = [asyncio.create_task(loader.load(data_url(PNG), 5000)) for _ in range(3)]
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(*tasks)

    results = run(body())
    assert results[0] is results[1] is results[2]
    assert len(decodes) == 1
    assert loader.stats() == {"hits": 0, "misses": 1, "shared": 2, "entries": 1}


def test_load_all_keeps_order():
    loader = ImageLoader(POLICY)
    results = run(loader.load_all([(data_url(PNG), 1_000_000), (data_url(JPEG, "image/jpeg"), 300)]))
    assert [r.digest for r in results] == [f"{hashlib.sha256(PNG).hexdigest()}:1000000",
                                           f"{hashlib.sha256(JPEG).hexdigest()}:300"]
    assert [r.image.size for r in results] == [(80, 60), (20, 15)]  # 80x60 within each budget
    assert close_to(results[0].image.getpixel((1, 1)), GREEN) and close_to(results[1].image.getpixel((1, 1)), RED)
    assert run(loader.load_all([])) == []


def test_load_all_names_the_failing_item_and_cancels_the_rest(origin):
    loader = ImageLoader(POLICY)
    items = [(origin.url("/slow?delay=3"), 1000), (data_url(PNG), 1000), ("data:image/jpg;base64,AAAA", 1000)]
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        run(loader.load_all(items))
    assert time.monotonic() - started < 2  # did not wait for the slow fetch
    assert info.value.index == 2 and info.value.code == "invalid_image_url"


def test_shared_errors_get_their_own_index(monkeypatch):
    loader = ImageLoader(POLICY)
    bad = data_url(PNG[:100])

    async def body():
        results = await asyncio.gather(loader.load_all([(bad, 10)]), loader.load_all([(data_url(PNG), 10), (bad, 10)]),
                                       return_exceptions=True)
        return results

    first, second = run(body())
    assert (first.index, second.index) == (0, 1)
