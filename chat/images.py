"""The image stage of the pipeline: image_url parts -> loaded, checked images -> what the engine takes.

Fetching, decoding and limits live in multimodal/; the model-specific patchifying lives in the engine. This
stage connects them in prompt order, names the failing part in every error, and expands each image's
placeholder token to the number of tokens the image really takes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.errors import APIError
from core.protocol import ImagePart, Message, TextPart
from core.settings import ImageSettings
from engines.base import Engine, EngineImage
from multimodal.errors import ImageError
from multimodal.loader import ImageLoader


@dataclass(frozen=True, slots=True)
class ImageRef:
    param: str  # e.g. "messages[1].content[0]"
    url: str
    detail: str


def collect_images(messages: list[Message]) -> list[ImageRef]:
    """Every image_url part, in the order the chat template will place them."""
    refs = []
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    refs.append(ImageRef(f"messages[{i}].content[{j}]", part.image_url.url,
                                         part.image_url.detail or "auto"))
    return refs


def refuse_placeholder_text(messages: list[Message], placeholders: tuple[str, ...]) -> None:
    """A request with images: no message text may spell an image placeholder, which the model's image
    processor would bind to an image (on SGLang, the legacy "<image>" too) and so miscount them."""
    for i, message in enumerate(messages):
        content = message.content
        parts = [(f"messages[{i}].content", content)] if isinstance(content, str) else [
            (f"messages[{i}].content[{j}].text", part.text) for j, part in enumerate(content or [])
            if isinstance(part, TextPart)]
        for param, text in parts:
            found = next((p for p in placeholders if p in text), None)
            if found is not None:
                raise APIError(400, f"'{param}' contains {found!r}, which this model reads as an image "
                               "placeholder; with images in the request, message text must not spell one",
                               param=param, code="invalid_image_placeholder")


def pixel_budget(detail: str, settings: ImageSettings) -> int:
    return {"low": settings.pixels_low, "high": settings.pixels_high}.get(detail, settings.pixels_auto)


async def prepare_images(refs: list[ImageRef], settings: ImageSettings, loader: ImageLoader,
                         engine: Engine) -> list[EngineImage]:
    """Fetch or decode every image concurrently, then patchify them for the engine, off the event loop."""
    budgets = [pixel_budget(ref.detail, settings) for ref in refs]
    try:
        loaded = await loader.load_all([(ref.url, budget) for ref, budget in zip(refs, budgets, strict=True)])
    except ImageError as exc:
        index = getattr(exc, "index", 0)
        raise APIError(400, f"{refs[index].param}: {exc}", param=f"{refs[index].param}.image_url.url",
                       code=exc.code) from None
    return list(await asyncio.gather(*(
        asyncio.to_thread(engine.prepare_image, image.image, image.digest, budget)
        for image, budget in zip(loaded, budgets, strict=True))))


def check_placeholders(prompt_ids: list[int], placeholder: int, images: list[EngineImage]) -> None:
    """One placeholder token per image, as the template writes them (the engine expands each to its image's
    tokens); more of them means a message's text spelled one out."""
    found = prompt_ids.count(placeholder)
    if found != len(images):
        raise APIError(400, f"The messages contain {found} image placeholder tokens for {len(images)} images: "
                       "message text must not contain the model's image placeholder token.",
                       param="messages", code="invalid_image_placeholder")
