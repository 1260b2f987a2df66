"""The comparison benchmark's workloads, each driven over HTTP like an OpenAI client, so any
OpenAI-compatible server is measured the same way. Every function takes a running server (bench/peers.py)."""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.peers import Running
from bench.sse import stream_chunks

FILLER = ("The quick brown fox jumps over the lazy dog while the river runs past old stone bridges "
          "and quiet fields. ")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
CITIES = ("Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Seoul", "Accra", "Hanoi")


def prompt_of(tokens: int) -> str:
    # ~27 tokens per FILLER sentence for the Qwen tokenizer; the nonce defeats any prefix reuse.
    return f"[{uuid.uuid4().hex}] " + FILLER * max(1, tokens // 27) + "Summarise the text above."


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def stream(server: Running, client: httpx.Client, messages: list[dict[str, Any]], max_tokens: int,
           headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """One streamed request: time to first content, content arrival times, usage, the text."""
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}
    start = time.perf_counter()
    stamps: list[float] = []
    usage, text = None, []
    for chunk in stream_chunks(client, server.base_url, body, {**server.headers, **(headers or {})}):
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
    end = time.perf_counter()
    return {"ttft": (stamps[0] if stamps else end) - start, "stamps": stamps, "usage": usage or {},
            "text": "".join(text), "total": end - start}


def single_stream(server: Running, repeats: int, new_tokens: int, prompt_sizes: tuple[int, ...]) -> dict[str, Any]:
    """Workload 1: time to first token by prompt size; decode tokens/s for `new_tokens` new tokens."""
    out: dict[str, Any] = {"ttft_s": {}, "prompt_tokens": {}}
    with httpx.Client(timeout=900) as client:
        stream(server, client, [{"role": "user", "content": "hi"}], 4)  # warm-up
        for size in prompt_sizes:
            runs = [stream(server, client, [{"role": "user", "content": prompt_of(size)}], 1)
                    for _ in range(repeats)]
            out["ttft_s"][str(size)] = statistics.median(r["ttft"] for r in runs)
            out["prompt_tokens"][str(size)] = statistics.median(r["usage"].get("prompt_tokens", 0) for r in runs)
        rates = []
        for _ in range(repeats):
            r = stream(server, client, [{"role": "user", "content": prompt_of(50)}], new_tokens, **server.no_eos)
            if len(r["stamps"]) > 1:
                # content chunks may carry several tokens: count tokens from usage, time from the chunks
                tokens = r["usage"].get("completion_tokens") or len(r["stamps"])
                rates.append((tokens - 1) / (r["stamps"][-1] - r["stamps"][0]))
        out["decode_tokens_per_s"] = statistics.median(rates) if rates else 0.0
    return out


def concurrency(server: Running, levels: tuple[int, ...], new_tokens: int, repeats: int = 1) -> dict[str, Any]:
    """Workload 2: aggregate tokens/s and the latency distributions at each number of concurrent streams.

    Each level runs `repeats` times; the run with the median aggregate tokens/s is reported (the machine is
    noisy), with every run's aggregate in `aggregate_runs`."""
    out = {}
    for level in levels:
        def one(_: int) -> dict[str, Any]:
            with httpx.Client(timeout=900) as client:
                return stream(server, client, [{"role": "user", "content": prompt_of(50)}], new_tokens,
                              **server.no_eos)

        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(level) as pool:
                results = list(pool.map(one, range(level)))
            wall = time.perf_counter() - start
            tokens = sum(r["usage"].get("completion_tokens", len(r["stamps"])) for r in results)
            ttfts = [r["ttft"] for r in results]
            gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:], strict=False)]
            runs.append({"aggregate_tokens_per_s": tokens / wall,
                         "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p99_s": percentile(ttfts, 0.99),
                         "itl_p50_s": percentile(gaps, 0.5) if gaps else 0.0,
                         "itl_p99_s": percentile(gaps, 0.99) if gaps else 0.0})
        runs.sort(key=lambda run: run["aggregate_tokens_per_s"])
        out[str(level)] = {**runs[len(runs) // 2],
                           "aggregate_runs": [run["aggregate_tokens_per_s"] for run in runs]}
    return out


def multi_turn(server: Running, conversations: int, turns: int, reply_tokens: int) -> dict[str, Any]:
    """Workload 3: conversations interleaved turn by turn; time to first token per turn (median over the
    conversations). Each conversation carries its whole history, and the server's session setting."""
    histories: list[list[dict[str, Any]]] = [[{"role": "system", "content": f"You are assistant {uuid.uuid4().hex}. "
                                               + FILLER * 4}] for _ in range(conversations)]
    sessions = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(conversations)]
    per_turn: list[list[float]] = [[] for _ in range(turns)]
    cached: list[list[int]] = [[] for _ in range(turns)]
    with httpx.Client(timeout=900) as client:
        for turn in range(turns):
            for c in range(conversations):
                histories[c].append({"role": "user", "content": f"Turn {turn + 1}. " + FILLER * 2
                                     + "Answer in one short sentence."})
                r = stream(server, client, histories[c], reply_tokens, server.session_headers(sessions[c]))
                per_turn[turn].append(r["ttft"])
                details = r["usage"].get("prompt_tokens_details") or {}
                cached[turn].append(int(details.get("cached_tokens") or 0))
                histories[c].append({"role": "assistant", "content": r["text"] or "OK."})
    return {"ttft_by_turn_s": [statistics.median(t) for t in per_turn],
            "cached_tokens_by_turn": [statistics.median(c) for c in cached]}


def tool_calls(server: Running, requests: int) -> dict[str, Any]:
    """Workload 4: required tool calls; the share whose arguments are valid JSON matching the schema."""
    import jsonschema

    valid, tokens, elapsed = 0, 0, 0.0
    with httpx.Client(timeout=900) as client:
        for i in range(requests):
            body = {"model": server.model, "max_tokens": 80, "temperature": 0, "tools": [WEATHER],
                    "tool_choice": "required", "parallel_tool_calls": False,
                    "messages": [{"role": "user", "content": f"What is the weather in {CITIES[i % len(CITIES)]}?"}]}
            start = time.perf_counter()
            response = client.post(f"{server.base_url}/v1/chat/completions", json=body)
            elapsed += time.perf_counter() - start
            if response.status_code != 200:
                continue
            data = response.json()
            tokens += (data.get("usage") or {}).get("completion_tokens", 0)
            calls = data["choices"][0]["message"].get("tool_calls") or []
            try:
                for call in calls:
                    assert call["function"]["name"] == "get_weather"
                    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
                valid += bool(calls)
            except (AssertionError, ValueError, jsonschema.ValidationError, KeyError, TypeError):
                pass
    return {"requests": requests, "valid_share": valid / requests,
            "completion_tokens_per_s": tokens / elapsed if elapsed else 0.0}


# Workload 5's file: code an agent asks the model to edit and give back whole, most of it copied unchanged
# (what prompt-lookup decoding pays on). ~40 lines, ~330 tokens.
EDIT_SOURCE = '''import json
from pathlib import Path


class Inventory:
    """Items and their counts, saved as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, int] = {}
        if path.exists():
            self.items = json.loads(path.read_text())

    def add(self, name: str, count: int = 1) -> None:
        if count <= 0:
            raise ValueError("count must be positive")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> None:
        have = self.items.get(name, 0)
        if count > have:
            raise ValueError(f"only {have} of {name} left")
        self.items[name] = have - count
        if self.items[name] == 0:
            del self.items[name]

    def total(self) -> int:
        return sum(self.items.values())

    def save(self) -> None:
        self.path.write_text(json.dumps(self.items, indent=2, sort_keys=True))


def main() -> None:
    inventory = Inventory(Path("inventory.json"))
    inventory.add("apple", 3)
    inventory.add("pear")
    inventory.remove("apple")
    print(inventory.total())
    inventory.save()
'''
EDITS = ("Rename the method `total` to `count_all` everywhere.", "Rename the class `Inventory` to `Stock` everywhere.",
         "Change the default `count` of `add` and `remove` from 1 to 2.")


def editing(server: Running, repeats: int, max_tokens: int) -> dict[str, Any]:
    """Workload 5: an edit of a code file returned whole (greedy): decode tokens/s and how many tokens."""
    rates, tokens = [], []
    with httpx.Client(timeout=900) as client:
        for i in range(repeats):
            messages = [{"role": "user", "content": f"{EDITS[i % len(EDITS)]} Reply with the whole file in one "
                                                    f"Python code block and nothing else.\n\n```python\n"
                                                    f"{EDIT_SOURCE}```"}]
            r = stream(server, client, messages, max_tokens)
            count = r["usage"].get("completion_tokens") or len(r["stamps"])
            if len(r["stamps"]) > 1:
                rates.append((count - 1) / (r["stamps"][-1] - r["stamps"][0]))
                tokens.append(count)
    return {"decode_tokens_per_s": statistics.median(rates) if rates else 0.0,
            "completion_tokens": statistics.median(tokens) if tokens else 0, "runs": rates}
