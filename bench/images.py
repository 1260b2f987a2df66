"""Image benchmarks: decode-and-resize time per image, and what a repeated image saves in a conversation.

    python -m bench.images [--repeats 5]

1. Decode and resize a 1080p and a 12-megapixel JPEG to each detail's pixel budget, with Lodestar's decoder
   (header check, JPEG draft mode, EXIF, RGB, downscale) and, for comparison, a naive full decode followed
   by a resize.
2. A 4-turn conversation about one 12-megapixel JPEG (sent as a data URL every turn, as the OpenAI habit
   is) against a real server on the tiny Qwen2.5-VL fixture: request latency per turn with the image and
   vision-encoder caches on, then with both off. The fixture's vision transformer is tiny, so the saving
   measured here is mostly decoding; with a real Qwen2.5-VL the encoder's share (saved too) is larger.

Writes bench/results/images-<time>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from core.settings import Settings
from multimodal.decode import decode_image
from tests.conftest import ROOT, start_server

SIZES = {"1080p": (1920, 1080), "12MP": (4000, 3000)}


def photo_like_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG with smooth gradients plus fine noise, so it compresses like a photo, not like a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def naive_decode(data: bytes, budget: int) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = min(1.0, (budget / (img.width * img.height)) ** 0.5)
    return img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.LANCZOS)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def decode_times(images: dict[str, bytes], repeats: int) -> dict:
    settings = Settings()
    budgets = {"low": settings.images.pixels_low, "auto": settings.images.pixels_auto,
               "high": settings.images.pixels_high}
    out = {}
    for name, data in images.items():
        row: dict = {"bytes": len(data)}
        for detail, budget in budgets.items():
            ours = median_ms(lambda d=data, b=budget: decode_image(
                d, pixel_budget=b, max_source_pixels=settings.images.max_source_pixels), repeats)
            naive = median_ms(lambda d=data, b=budget: naive_decode(d, b), repeats)
            row[detail] = {"lodestar_ms": ours, "naive_ms": naive, "speedup": round(naive / ours, 2)}
        out[name] = row
    return out


def conversation(base: str, model: str, url: str, turns: int) -> list[float]:
    messages: list[dict] = [{"role": "user", "content": [
        {"type": "text", "text": "Describe this photo."}, {"type": "image_url", "image_url": {"url": url}}]}]
    times = []
    with httpx.Client(timeout=300) as client:
        for turn in range(turns):
            start = time.perf_counter()
            r = client.post(f"{base}/v1/chat/completions", json={
                "model": model, "messages": messages, "max_tokens": 1, "temperature": 0})
            r.raise_for_status()
            times.append(round((time.perf_counter() - start) * 1000, 1))
            messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"] or "ok"},
                         {"role": "user", "content": f"Question {turn + 2} about it?"}]
    return times


def repeated_image(tmp: Path, data: bytes, turns: int) -> dict:
    from fixtures.models.tiny_qwen2_5_vl import DEFAULT_OUT, build, default_tokenizer_folder

    model = build(DEFAULT_OUT, default_tokenizer_folder())
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    out = {}
    for label, extra in (("cached", []), ("uncached", ["--image-cache-entries", "0", "--vision-cache-entries", "0"])):
        server = start_server(tmp, "--model", str(model), "--quantize", "none", *extra)
        try:
            model_id = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
            conversation(server.base_url, model_id, url, 1)  # warm-up: first-request costs are not the point
            out[label] = conversation(server.base_url, model_id, url, turns)
        finally:
            server.stop()
    later_cached = statistics.median(out["cached"][1:])
    later_uncached = statistics.median(out["uncached"][1:])
    out["median_later_turn_ms"] = {"cached": later_cached, "uncached": later_uncached,
                                   "saved_ms": round(later_uncached - later_cached, 1),
                                   "ratio": round(later_uncached / later_cached, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Lodestar image benchmarks")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    images = {name: photo_like_jpeg(*size) for name, size in SIZES.items()}
    results = {"decode_and_resize": decode_times(images, args.repeats)}
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results["repeated_image_12MP"] = repeated_image(results_dir, images["12MP"], args.turns)
    path = results_dir / f"images-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
