"""Agent-loop completion: a tool call, its result, then a final answer that uses the result.

    python -m bench.agent_loop [--count 36] [--max-turns 4] [--server-arg=--bare-calls-after-tool-results ...]

What agent frameworks (the OpenAI Agents SDK, pydantic-ai, LangChain agents) do with a model, without them:
each prompt is sent with three tools and tool_choice "auto"; every call the model makes is run by a small
deterministic Python function and its result sent back as a `tool` message, until the model answers in
text or `--max-turns` requests were made. A prompt completes when the model called the right tool with
arguments that match its schema and its final text contains the result's key value (a temperature, a sum,
a price). Also counted: prompts that ran out of turns (the model kept calling), final texts that look like
a call written out as JSON, and replies with no call at all. Default model, temperature 0.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import time
from typing import Any

import httpx
import jsonschema

from tests.conftest import ROOT, start_server

SYSTEM = "You are a helpful assistant."


def _schema(**props: str) -> dict[str, Any]:
    return {"type": "object", "properties": {k: {"type": v} for k, v in props.items()},
            "required": list(props), "additionalProperties": False}


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.",
                                      "parameters": _schema(city="string")}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                      "parameters": _schema(a="integer", b="integer")}},
    {"type": "function", "function": {"name": "get_stock_price",
                                      "description": "Get the latest price of a stock, by ticker symbol.",
                                      "parameters": _schema(symbol="string")}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _temperature(city: str) -> int:
    return 5 + sum(map(ord, city.strip().lower())) % 25


def _price(symbol: str) -> str:
    return f"{100 + sum(map(ord, symbol.strip().upper())) % 400}.{sum(map(ord, symbol)) % 90 + 10}"


def run_tool(name: str, args: dict[str, Any]) -> tuple[str, str]:
    """(the tool message's content, the value a final answer must mention)."""
    if name == "get_weather":
        t = _temperature(args["city"])
        return f"It is {t} degrees Celsius and sunny in {args['city']}.", str(t)
    if name == "add":
        total = args["a"] + args["b"]
        return str(total), str(total)
    price = _price(args["symbol"])
    return f"{args['symbol'].upper()} last traded at {price} USD.", price


CITIES = ["Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Nairobi", "Toronto", "Madrid", "Seoul", "Sydney", "Dublin",
          "Hanoi"]
WEATHER = ["What is the weather in {}?", "How warm is it in {} right now?", "Is it cold in {} today?",
           "Tell me the temperature in {}."]
SUMS = [(17, 25), (128, 256), (999, 1), (42, 58), (315, 27), (73, 19), (1200, 34), (5, 8), (66, 77), (250, 750),
        (31, 11), (400, 88)]
ADD = ["What is {} plus {}?", "Add {} and {}.", "Please compute {} + {} with the calculator.",
       "I have {} apples and buy {} more. How many do I have?"]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOGL", "IBM", "ORCL", "INTC", "AMD", "META", "NFLX"]
STOCKS = ["What is the stock price of {}?", "How much does one {} share cost?", "Look up {} for me.",
          "What did {} last trade at?"]


def prompts() -> list[tuple[str, str]]:
    """(prompt, the tool it needs): interleaved, so any --count covers all three tools."""
    out = []
    for i in range(12):
        out.append((WEATHER[i % 4].format(CITIES[i]), "get_weather"))
        out.append((ADD[i % 4].format(*SUMS[i]), "add"))
        out.append((STOCKS[i % 4].format(SYMBOLS[i]), "get_stock_price"))
    return out


_CALL_TEXT = re.compile(r'[{"]\s*"?name"?\s*:|<tool_call>|"arguments"\s*:')


def run_case(client: httpx.Client, base: str, prompt: str, tool: str, max_turns: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    out: dict[str, Any] = {"prompt": prompt, "tool": tool, "calls": [], "turns": 0}
    expected: list[str] = []
    for _ in range(max_turns):
        r = client.post(f"{base}/v1/chat/completions", json={
            "model": "default", "messages": messages, "tools": TOOLS, "tool_choice": "auto", "temperature": 0,
            "max_tokens": 256})
        out["turns"] += 1
        if r.status_code != 200:
            out["error"] = r.text[:300]
            return out
        message = r.json()["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if not calls:
            out["final"] = message.get("content") or ""
            break
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        for call in calls:
            name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
            valid = not list(jsonschema.Draft202012Validator(SCHEMAS[name]).iter_errors(args))
            out["calls"].append({"name": name, "arguments": args, "valid": valid})
            content, value = run_tool(name, args) if valid else ("error: invalid arguments", "")
            if name == tool and valid:
                expected.append(value)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    final = out.get("final")
    out["used_result"] = final is not None and any(v and v in final for v in expected)
    out["completed"] = bool(expected) and out["used_result"]
    out["out_of_turns"] = final is None
    out["call_as_text"] = final is not None and bool(_CALL_TEXT.search(final))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Agent-loop completion over tool results")
    parser.add_argument("--count", type=int, default=36)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--server-arg", action="append", default=[], help="passed to the server (repeat)")
    args = parser.parse_args()
    cases = prompts()[: args.count]
    results_dir = ROOT / "bench" / "results"
    server = start_server(results_dir, "--model", "default", *args.server_arg)
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=600) as client, concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(lambda c: run_case(client, server.base_url, c[0], c[1], args.max_turns), cases))
    finally:
        server.stop()
    summary = {
        "server_args": args.server_arg, "prompts": len(rows),
        "completed": sum(r["completed"] for r in rows),
        "called_the_tool": sum(any(c["name"] == r["tool"] for c in r["calls"]) for r in rows),
        "no_call": sum(not r["calls"] for r in rows),
        "out_of_turns": sum(r["out_of_turns"] for r in rows),
        "final_text_is_a_call": sum(r["call_as_text"] for r in rows),
        "invalid_arguments": sum(not c["valid"] for r in rows for c in r["calls"]),
        "errors": sum("error" in r for r in rows),
        "mean_requests": round(sum(r["turns"] for r in rows) / len(rows), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = results_dir / f"agent-loop-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
