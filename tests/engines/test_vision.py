"""The embedded engine's vision path on the tiny random Qwen2.5-VL: our decoder (chunked prefill with
M-RoPE positions and merged image embeddings, then batched decode) matches transformers' own forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engines.base import EngineImage
from engines.embedded.decoder import Decoder
from engines.embedded.loader import load_model
from engines.embedded.vision import QwenVision, expand_placeholders


@pytest.fixture(scope="module")
def vl(tiny_vl_model: Path, tmp_path_factory):
    loaded = load_model(str(tiny_vl_model), tmp_path_factory.mktemp("data"), quantize="none")
    return loaded, QwenVision(loaded.model, tiny_vl_model), Decoder(loaded.model)


def noise(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def prompt(loaded, vision: QwenVision, images, *, expanded: bool = True) -> list[int]:
    """The chat template's prompt for these images: as the model sees it (each image's placeholder repeated
    for its tokens), or with expanded=False as an EngineRequest carries it (one placeholder per image)."""
    tok = loaded.tokenizer
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": "Describe."}]
    text = tok.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return expand_placeholders(ids, vision.image_token_id, images) if expanded else ids


def test_expand_placeholders_repeats_each_images_placeholder_for_its_tokens() -> None:
    images = [EngineImage(digest="a", num_tokens=3, data=None), EngineImage(digest="b", num_tokens=1, data=None)]
    assert expand_placeholders([5, 9, 6, 9, 7], 9, images) == [5, 9, 9, 9, 6, 9, 7]
    assert expand_placeholders([1, 2], 9, []) == [1, 2]
    with pytest.raises(ValueError, match="2 image placeholders for 1 images"):
        expand_placeholders([9, 9], 9, images[:1])


def test_token_count_follows_the_pixel_budget(vl):
    _, vision, _ = vl
    image = noise(300, 400, 0)
    assert vision.prepare(image, "a", 1_000_000).num_tokens == (308 // 28) * (392 // 28)  # 11 x 14
    small = vision.prepare(image, "a", 28 * 28 * 20)
    assert small.num_tokens <= 20
    assert vision.prepare(image, "a", 28 * 28 * 20).digest == small.digest
    assert vision.prepare(image, "a", 1_000_000).digest != small.digest  # the budget is part of the key


def test_decoder_matches_transformers_with_images(vl, no_grad):
    loaded, vision, decoder = vl
    model = loaded.model
    images = [vision.prepare(noise(100, 150, 1), "one", 200_000), vision.prepare(noise(60, 60, 2), "two", 200_000)]
    ids = prompt(loaded, vision, images)
    pad = vision.image_token_id
    pixels = torch.cat([im.data[0] for im in images])
    grids = torch.tensor([im.data[1] for im in images])

    def reference(seq: list[int]) -> torch.Tensor:
        t = torch.tensor([seq])
        return model(input_ids=t, pixel_values=pixels, image_grid_thw=grids,
                     mm_token_type_ids=(t == pad).int()).logits[0, -1]

    positions, offset = vision.positions(ids, images)
    embeds = vision.encode(images)
    cache = decoder.new_cache(len(ids) + 4)
    cache.position_offset = offset
    cut = len(ids) // 2 + 3  # two prefill chunks, the cut falls inside the first image's tokens
    used = 0
    for start, end in ((0, cut), (cut, len(ids))):
        chunk = ids[start:end]
        mask = torch.tensor(chunk) == pad
        n = int(mask.sum())
        logits = decoder.prefill(cache, chunk, positions=positions[:, start:end], embeds=(mask, embeds[used:used + n]))
        used += n
    torch.testing.assert_close(logits, reference(ids), atol=1e-4, rtol=1e-4)
    nxt = int(logits.argmax())
    torch.testing.assert_close(decoder.decode([cache], [nxt])[0], reference(ids + [nxt]), atol=1e-4, rtol=1e-4)


def test_different_images_give_different_logits_and_the_cache_is_used(vl, no_grad):
    loaded, vision, decoder = vl

    def run(image: Image.Image, digest: str) -> torch.Tensor:
        images = [vision.prepare(image, digest, 100_000)]
        ids = prompt(loaded, vision, images)
        positions, offset = vision.positions(ids, images)
        cache = decoder.new_cache(len(ids))
        mask = torch.tensor(ids) == vision.image_token_id
        return decoder.prefill(cache, ids, positions=positions, embeds=(mask, vision.encode(images)))

    a, b = noise(80, 80, 3), noise(80, 80, 4)
    misses = vision.misses
    first = run(a, "a")
    hits = vision.hits
    assert torch.equal(run(a, "a"), first)
    assert vision.hits == hits + 1 and vision.misses == misses + 1
    assert not torch.allclose(run(b, "b"), first)


def test_positions_of_text_and_images(vl):
    loaded, vision, _ = vl
    images = [vision.prepare(noise(56, 112, 5), "p", 100_000)]  # grid 1 x 4 x 8 -> 2 x 4 merged = 8 tokens
    ids = [1, 2] + [vision.image_token_id] * 8 + [3]
    positions, offset = vision.positions(ids, images)
    assert positions[:, :2].tolist() == [[0, 1]] * 3
    assert positions[0, 2:10].tolist() == [2] * 8  # one time step
    assert positions[1, 2:10].tolist() == [2, 2, 2, 2, 3, 3, 3, 3]  # rows
    assert positions[2, 2:10].tolist() == [2, 3, 4, 5] * 2  # columns
    assert positions[:, 10].tolist() == [6, 6, 6]  # text resumes past the image's larger side (4)
    assert offset == 7 - len(ids)
