"""Time to first token across a conversation: with X-Session-ID, without it, and without any prefix cache.

    python -m bench.sessions [--turns 10] [--conversations 4]

Four conversations run interleaved (turn 1 of each, then turn 2 of each, …), so a server that only keeps
the last prompt's cache (llama.cpp's single slot) would recompute everything each turn. Each turn adds a
~70-token user message; each reply is 32 tokens (greedy, `ignore_eos`). Three configurations of the same
server on the default model:

- `no cache`: `prefix_cache_bytes = 0`, the client sends the full history: every turn is prefilled whole;
- `cache, full history`: the prefix cache on, the client sends the full history without a session;
- `session`: the prefix cache on, `X-Session-ID`, the client sends only the new message.

Time to first token is measured from sending to the first streamed content. Writes
bench/results/sessions-<time>.json and bench/results/sessions.png (needs matplotlib: pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import httpx

from bench.sse import stream_chunks
from tests.conftest import ROOT, start_server

TOPICS = ["lighthouses", "bread baking", "the Roman roads", "tide pools"]
FILLER = ("Please keep your answer short. For context, I am writing notes for a small study group and I "
          "want each point to be concrete, with one example, and no lists longer than three items. ")


def ttft(client: httpx.Client, base: str, messages: list[dict[str, Any]],
         session: str | None) -> tuple[float, str, dict]:
    body = {"model": "default", "messages": messages, "max_tokens": 32, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"X-Session-ID": session} if session else {}
    started = time.perf_counter()
    first, text, usage = None, [], {}
    for chunk in stream_chunks(client, base, body, headers):
        usage = chunk.get("usage") or usage
        for c in chunk["choices"]:
            if c["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(c["delta"]["content"])
    assert first is not None
    return first - started, "".join(text), usage


def run(mode: str, turns: int, conversations: int) -> list[dict[str, Any]]:
    args = ["--model", "default"] + (["--prefix-cache-bytes", "0"] if mode == "no cache" else [])
    server = start_server(ROOT / "bench" / "results", *args)
    rows = []
    try:
        histories: list[list[dict[str, Any]]] = [[] for _ in range(conversations)]
        sessions = [f"bench:{uuid.uuid4().hex[:8]}" for _ in range(conversations)]
        with httpx.Client(timeout=600) as client:
            for turn in range(1, turns + 1):
                for c in range(conversations):
                    new = {"role": "user", "content": f"Turn {turn} about {TOPICS[c % len(TOPICS)]}: tell me "
                                                      f"one more fact. {FILLER}"}
                    history = histories[c]
                    sent = [new] if mode == "session" else [*history, new]
                    seconds, reply, usage = ttft(client, server.base_url, sent,
                                                 sessions[c] if mode == "session" else None)
                    history += [new, {"role": "assistant", "content": reply}]
                    rows.append({"mode": mode, "turn": turn, "conversation": c, "ttft_s": round(seconds, 4),
                                 "prompt_tokens": usage.get("prompt_tokens"),
                                 "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens")})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Time to first token across a conversation")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--conversations", type=int, default=4)
    args = parser.parse_args()
    modes = ["no cache", "cache, full history", "session"]
    rows = [row for mode in modes for row in run(mode, args.turns, args.conversations)]
    table: dict[str, dict[int, dict[str, float]]] = {}
    for mode in modes:
        for turn in range(1, args.turns + 1):
            picked = [r for r in rows if r["mode"] == mode and r["turn"] == turn]
            table.setdefault(mode, {})[turn] = {
                "ttft_s": round(statistics.median(r["ttft_s"] for r in picked), 3),
                "prompt_tokens": round(statistics.median(r["prompt_tokens"] for r in picked)),
                "cached_tokens": round(statistics.median(r["cached_tokens"] for r in picked))}
    last = args.turns
    summary = {"median_by_turn": table,
               f"turn_{last}_ratio_session_vs_no_cache": round(
                   table["session"][last]["ttft_s"] / table["no cache"][last]["ttft_s"], 3),
               f"turn_{last}_ratio_full_history_vs_no_cache": round(
                   table["cache, full history"][last]["ttft_s"] / table["no cache"][last]["ttft_s"], 3)}
    results = ROOT / "bench" / "results"
    path = results / f"sessions-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in modes:
        turns = sorted(table[mode])
        ax.plot(turns, [table[mode][t]["ttft_s"] for t in turns], marker="o", label=mode)
    ax.set_xlabel("turn")
    ax.set_ylabel("time to first token, s (median of conversations)")
    ax.set_title(f"{args.conversations} interleaved conversations, default model, 2 vCPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "sessions.png", dpi=110)
    print(f"written to {path} and {results / 'sessions.png'}")


if __name__ == "__main__":
    main()
