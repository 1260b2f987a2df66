"""Reasoning budgets under a sweep: 100 prompts with random budgets, each must be honoured exactly.

    python -m bench.reasoning [--count 100] [--concurrency 4] [--seed 0]

A real server on the default model with prompted thinking; every request carries a random
`reasoning.max_tokens` between 1 and 96 and `max_tokens` = budget + 48, half of them streamed. Counted per
request: the reasoning tokens reported in usage, the reasoning text re-tokenized (an independent count),
whether an answer followed, and the finish reason. The budget is honoured when usage's reasoning tokens do
not exceed it. Results go to bench/results/reasoning-*.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import random
import statistics
import time
from typing import Any

import httpx

from bench.sse import stream_chunks
from tests.conftest import ROOT, start_server

TOPICS = ["why the sky is blue", "how a binary search works", "whether 221 is prime", "what a hash map is",
          "how to reverse a linked list", "the difference between TCP and UDP", "what recursion is",
          "how vaccines train the immune system", "why ice floats", "how to sort a list in Python",
          "what a race condition is", "how compound interest grows", "what makes a good unit test",
          "how photosynthesis works", "what Big-O notation means", "how DNS resolves a name",
          "why the moon has phases", "what a closure is in JavaScript", "how a CPU cache helps",
          "what 17 times 24 is"]
STYLES = ["Explain {}.", "In two sentences: {}?", "Think it through, then answer: {}.", "Briefly, {}?",
          "A student asks about {}. Answer them."]


def cases(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        budget = rng.randint(1, 96)
        out.append({"i": i, "budget": budget, "stream": i % 2 == 1, "seed": rng.randrange(1 << 30),
                    "prompt": rng.choice(STYLES).format(rng.choice(TOPICS))})
    return out


def run_case(client: httpx.Client, base: str, case: dict[str, Any]) -> dict[str, Any]:
    body = {"model": "default", "messages": [{"role": "user", "content": case["prompt"]}],
            "max_tokens": case["budget"] + 48, "temperature": 0.7, "seed": case["seed"],
            "reasoning": {"max_tokens": case["budget"]}}
    started = time.perf_counter()
    if case["stream"]:
        body.update(stream=True, stream_options={"include_usage": True})
        reasoning, content, usage, finish = [], [], None, None
        for chunk in stream_chunks(client, base, body):
            usage = chunk.get("usage") or usage
            for c in chunk["choices"]:
                reasoning.append(c["delta"].get("reasoning_content") or "")
                content.append(c["delta"].get("content") or "")
                finish = c.get("finish_reason") or finish
        reasoning_text, content_text = "".join(reasoning), "".join(content)
    else:
        r = client.post(f"{base}/v1/chat/completions", json=body)
        r.raise_for_status()
        data = r.json()
        usage, message = data["usage"], data["choices"][0]["message"]
        reasoning_text, content_text = message.get("reasoning_content") or "", message.get("content") or ""
        finish = data["choices"][0]["finish_reason"]
    assert usage is not None
    return {**case, "seconds": round(time.perf_counter() - started, 2), "finish": finish,
            "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
            "completion_tokens": usage["completion_tokens"], "reasoning_text": reasoning_text,
            "answered": bool(content_text.strip()),
            "markers_in_content": "<think>" in content_text or "</think>" in content_text}


def main() -> None:
    parser = argparse.ArgumentParser(description="Reasoning-budget sweep")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(results_dir, "--model", "default", "--prompted-thinking")
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=600) as client, \
                concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(lambda case: run_case(client, server.base_url, case),
                                 cases(args.count, args.seed)))
    finally:
        server.stop()
    from transformers import AutoTokenizer

    from fixtures.models.tiny_qwen2_5_vl import default_tokenizer_folder

    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_folder())
    for row in rows:
        row["retokenized"] = len(tokenizer(row.pop("reasoning_text"), add_special_tokens=False)["input_ids"])
    ratios = [r["reasoning_tokens"] / r["budget"] for r in rows]
    deciles = collections.Counter(min(9, int(ratio * 10)) for ratio in ratios)
    summary = {
        "requests": len(rows),
        "budget_honoured": sum(r["reasoning_tokens"] <= r["budget"] for r in rows),
        "at_budget": sum(r["reasoning_tokens"] == r["budget"] for r in rows),
        "one_below_budget": sum(r["reasoning_tokens"] == r["budget"] - 1 for r in rows),
        "closed_by_model_earlier": sum(r["reasoning_tokens"] < r["budget"] - 1 for r in rows),
        "retokenized_within_budget": sum(r["retokenized"] <= r["budget"] for r in rows),
        "answered": sum(r["answered"] for r in rows),
        "markers_in_content": sum(r["markers_in_content"] for r in rows),
        "finish_reasons": dict(collections.Counter(r["finish"] for r in rows)),
        "reasoning_over_budget_deciles": {f"{d / 10:.1f}-{(d + 1) / 10:.1f}": deciles.get(d, 0) for d in range(10)},
        "median_ratio": round(statistics.median(ratios), 3),
        "median_seconds": round(statistics.median(r["seconds"] for r in rows), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = results_dir / f"reasoning-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
