"""Images for SGLang workers: resized here to the request's pixel budget and sent as PNG data URLs.

Lodestar fetched and checked the image; SGLang never sees its URL. The size is one SGLang's Qwen-VL
processor keeps as it is (whole 28-pixel patches within its limits), so the prompt's placeholder count
computed here is the one SGLang expands to.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from engines.base import EngineImage

# Model types whose image placeholders this module can count (Qwen2-VL's patch-merge scheme).
QWEN_VL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl"})
_FACTOR = 28  # 14-pixel patches, merged 2x2 into one token


def prepare_qwen_vl(image: Any, digest: str, pixel_budget: int) -> EngineImage:
    # The PIL variant: the torch one imports torchvision, which this CPU build must not have.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    height, width = smart_resize(image.height, image.width, factor=_FACTOR, min_pixels=_FACTOR * _FACTOR * 4,
                                 max_pixels=max(pixel_budget, _FACTOR * _FACTOR * 4))
    if (width, height) != image.size:
        image = image.resize((width, height), resample=3)  # bicubic, as the model's processor does
    out = io.BytesIO()
    image.save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    tokens = (height // _FACTOR) * (width // _FACTOR)
    return EngineImage(digest=f"{digest}:{width}x{height}", num_tokens=tokens, data=url)
