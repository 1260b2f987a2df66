"""The image path of Qwen2-VL-style models in the embedded engine: pixels -> patches -> embeddings.

`QwenVision.prepare` runs in any thread (the pipeline calls it off the event loop): it patchifies a decoded
image with transformers' Pillow-only image processor, which tells how many placeholder tokens the image
takes. `QwenVision.encode` runs in the scheduler thread: it turns patches into embeddings with the model's
vision transformer and keeps recent results by content digest, so a conversation that keeps talking about
one picture encodes it once.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engines.base import EngineImage

if TYPE_CHECKING:
    from engines.embedded.sequence import Group


class QwenVision:
    def __init__(self, model: Any, folder: Path, *, cache_entries: int = 32) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.visual = model.model.visual
        self.image_token_id = int(model.config.image_token_id)
        self.merge = int(model.config.vision_config.spatial_merge_size)
        self.processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
        self.patch_factor = int(self.processor.patch_size) * self.merge  # pixels per merged token side
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()  # stats() reads the counters from the event loop
        self.hits = 0
        self.misses = 0

    def prepare(self, image: Any, digest: str, pixel_budget: int) -> EngineImage:
        """Patchify one RGB Pillow image, at most `pixel_budget` pixels (rounded to whole patches)."""
        size = dict(self.processor.size)
        floor = self.patch_factor**2
        size["longest_edge"] = max(floor, min(int(size["longest_edge"]), pixel_budget))
        size["shortest_edge"] = min(int(size["shortest_edge"]), size["longest_edge"])
        out = self.processor(images=[image], size=size, return_tensors="pt")
        grid = tuple(int(v) for v in out["image_grid_thw"][0])
        tokens = grid[0] * grid[1] * grid[2] // (self.merge**2)
        return EngineImage(digest=f"{digest}:{grid}", num_tokens=tokens,
                           data=(out["pixel_values"], grid))

    def encode(self, images: list[EngineImage]) -> torch.Tensor:
        """Embeddings of every image token of a prompt, in prompt order: [sum(num_tokens), hidden]."""
        parts = []
        for image in images:
            cached = self._cache.get(image.digest)
            if cached is not None:
                self._cache.move_to_end(image.digest)
                with self._lock:
                    self.hits += 1
                parts.append(cached)
                continue
            pixels, grid = image.data
            out = self.visual(pixels.to(self.visual.dtype), grid_thw=torch.tensor([grid]))
            embeds = out.pooler_output if hasattr(out, "pooler_output") else out
            if embeds.shape[0] != image.num_tokens:
                raise ValueError(f"the vision encoder gave {embeds.shape[0]} embeddings for an image that "
                                 f"takes {image.num_tokens} tokens")
            with self._lock:
                self.misses += 1
            parts.append(embeds)
            if self._cache_entries:
                self._cache[image.digest] = embeds
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def positions(self, token_ids: list[int], images: list[EngineImage]) -> tuple[torch.Tensor, int]:
        """M-RoPE positions [3, len] of a prompt, and the offset of the positions that follow it.

        Text tokens advance all three axes together; an image's tokens share one time position and take
        their row and column within the merged grid, all starting where the text stopped; the text after
        an image resumes past the image's larger side.
        """
        pos = torch.empty(3, len(token_ids), dtype=torch.long)
        grids = iter(image.data[1] for image in images)
        current = start = 0
        for is_image, run in itertools.groupby(token_ids, key=lambda t: t == self.image_token_id):
            length = sum(1 for _ in run)
            while is_image and length:  # adjacent images form one run: split it by their grids
                t, h, w = next(grids)
                h, w = h // self.merge, w // self.merge
                n = t * h * w
                grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                                  indexing="ij")).reshape(3, -1)
                pos[:, start:start + n] = grid + current
                current += max(h, w)
                start += n
                length -= n
            if not is_image:
                pos[:, start:start + length] = torch.arange(current, current + length)
                current += length
                start += length
        return pos, current - len(token_ids)

    def chunk_inputs(self, group: Group, chunk: list[int], end: int) -> dict[str, Any]:
        """M-RoPE positions and image embeddings for one prefill chunk (ending at `end`) of a prompt with
        images; the first chunk encodes every image of the prompt once and keeps the result on the group."""
        assert group.cache is not None
        if group.positions is None:
            group.positions, group.cache.position_offset = self.positions(group.req.prompt_ids, group.req.images)
            group.image_embeds = self.encode(group.req.images)
        start = end - len(chunk)
        extra: dict[str, Any] = {"positions": group.positions[:, start:end]}
        mask = torch.tensor(chunk) == self.image_token_id
        count = int(mask.sum())
        if count:
            assert group.image_embeds is not None
            rows = group.image_embeds[group.image_rows_used : group.image_rows_used + count]
            if rows.shape[0] != count:
                raise ValueError("the prompt has more image tokens than its images have embeddings")
            group.image_rows_used += count
            extra["embeds"] = (mask, rows)
        return extra

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"vision_cache_hits": self.hits, "vision_cache_misses": self.misses}


def expand_placeholders(prompt_ids: list[int], placeholder: int, images: list[EngineImage]) -> list[int]:
    """Repeat the i-th placeholder token images[i].num_tokens times (the template writes it once)."""
    if prompt_ids.count(placeholder) != len(images):  # the pipeline refused such a prompt already
        raise ValueError(f"the prompt has {prompt_ids.count(placeholder)} image placeholders for "
                         f"{len(images)} images")
    out: list[int] = []
    sizes = iter(image.num_tokens for image in images)
    for token in prompt_ids:
        if token == placeholder:
            out.extend([placeholder] * next(sizes))
        else:
            out.append(token)
    return out
