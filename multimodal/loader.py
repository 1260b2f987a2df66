"""From an image_url string to a decoded picture: data or fetched bytes, a content-addressed cache, batches."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import Counter, OrderedDict
from dataclasses import dataclass

from PIL import Image

from core.settings import ImageSettings

from .data_url import decode_data_url
from .decode import decode_image
from .errors import ImageError
from .fetch import Resolver, fetch_image
from .sniff import require_format


@dataclass(frozen=True, slots=True)
class LoadedImage:
    digest: str  # sha256 of the encoded bytes + ":" + pixel budget: the cache key
    image: Image.Image  # RGB, within the budget; shared between cache hits, so treat it as read-only


class ImageLoader:
    """Loads images under one policy; equal bytes at equal budget are decoded once and then cached (LRU)."""

    def __init__(self, policy: ImageSettings, resolve: Resolver | None = None, *,
                 verify: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self._resolve = resolve
        self._verify = verify
        self._cache: OrderedDict[str, LoadedImage] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[LoadedImage]] = {}
        self._hits = self._misses = self._shared = 0
        self.failures: Counter[str] = Counter()  # ImageError codes (metrics)

    async def load(self, url: str, pixel_budget: int) -> LoadedImage:
        """The image at `url` (data:, https:, http: or file:), downscaled to pixel_budget; raises ImageError."""
        try:
            return await self._load(url, pixel_budget)
        except ImageError as exc:
            self.failures[exc.code] += 1
            raise

    async def _load(self, url: str, pixel_budget: int) -> LoadedImage:
        data = await self._bytes(url)
        key = f"{hashlib.sha256(data).hexdigest()}:{pixel_budget}"
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._hits += 1
            return cached
        task = self._inflight.get(key)
        if task is None:
            self._misses += 1
            task = asyncio.create_task(self._decode(key, data, pixel_budget))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        else:
            self._shared += 1  # the same bytes are being decoded for another request right now
        # shield: one waiter giving up (a cancelled request) must not cancel the decode others wait for.
        return await asyncio.shield(task)

    async def load_all(self, items: list[tuple[str, int]]) -> list[LoadedImage]:
        """Load (url, pixel_budget) pairs concurrently; the first failure cancels the rest.

        The raised ImageError carries `.index`, the position of the failing item (the lowest one when
        several have failed by the time it is noticed).
        """
        tasks = [asyncio.create_task(self.load(url, budget)) for url, budget in items]
        if not tasks:
            return []
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for index, task in enumerate(tasks):
                exc = task.exception() if task in done and not task.cancelled() else None
                if exc is not None:
                    if isinstance(exc, ImageError):
                        raise exc.with_index(index) from exc
                    raise exc
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """Cache figures for /metrics: hits, misses (decodes started), shared (joined a running decode), entries."""
        return {"hits": self._hits, "misses": self._misses, "shared": self._shared, "entries": len(self._cache)}

    async def _bytes(self, url: str) -> bytes:
        if url.lstrip()[:5].lower() == "data:":
            media_type, data = decode_data_url(url, self.policy.max_bytes)
            require_format(data, media_type)
        else:
            data = await fetch_image(url, self.policy, resolve=self._resolve, verify=self._verify)
            require_format(data)  # a fetched body's Content-Type is not trusted; only its bytes count
        return data

    async def _decode(self, key: str, data: bytes, pixel_budget: int) -> LoadedImage:
        image = await asyncio.to_thread(
            decode_image, data, pixel_budget=pixel_budget, max_source_pixels=self.policy.max_source_pixels)
        loaded = LoadedImage(digest=key, image=image)
        if self.policy.cache_entries > 0:
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            while len(self._cache) > self.policy.cache_entries:
                self._cache.popitem(last=False)
        return loaded

    def _finished(self, key: str, task: asyncio.Task[LoadedImage]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark as retrieved: if every waiter gave up, nobody else will look
