"""Serving benchmark: decode speed, time to first token, concurrency, and the HTTP layer's own cost.

    .venv/bin/python -m bench.serving [--model default] [--quick] [--out bench/results/serving.json]

Starts its own servers on free loopback ports, drives them over HTTP with streaming requests the way an
OpenAI client does, and prints medians (the machine is noisy: trust medians and ratios, not single runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from bench.sse import stream_chunks
from tests.conftest import ROOT, free_port, start_server

FILLER = ("The quick brown fox jumps over the lazy dog while the river runs past old stone bridges "
          "and quiet fields. ")


def stream_request(base: str, body: dict, client: httpx.Client) -> dict:
    """One streamed request: time to first content token, token arrival times, usage."""
    start = time.perf_counter()
    first = None
    stamps: list[float] = []
    usage = None
    for chunk in stream_chunks(client, base, {**body, "stream": True}):
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                stamps.append(now)
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "stamps": stamps, "usage": usage, "total": end - start}


def prompt_of(tokens: int) -> str:
    # ~27 tokens per FILLER sentence for Qwen/SmolLM tokenizers; the nonce defeats any prefix reuse.
    return f"[{uuid.uuid4().hex}] " + FILLER * max(1, tokens // 27) + "Summarise the text above."


def single_stream(base: str, model: str, repeats: int, new_tokens: int) -> dict:
    decode, ttft, prompt_tokens = [], [], []
    with httpx.Client(timeout=600) as client:
        stream_request(base, {"model": model, "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 4}, client)  # warm-up
        for _ in range(repeats):
            body = {"model": model, "messages": [{"role": "user", "content": prompt_of(200)}],
                    "max_tokens": new_tokens, "ignore_eos": True, "temperature": 0}
            r = stream_request(base, body, client)
            ttft.append(r["ttft"])
            prompt_tokens.append(r["usage"]["prompt_tokens"])
            # decode rate: tokens after the first over the time between first and last token
            decode.append((r["usage"]["completion_tokens"] - 1) / (r["stamps"][-1] - r["stamps"][0]))
    return {"decode_tokens_per_s": statistics.median(decode), "ttft_200_s": statistics.median(ttft),
            "prompt_tokens": statistics.median(prompt_tokens), "runs": repeats}


def concurrent_streams(base: str, model: str, streams: int, new_tokens: int, repeats: int) -> dict:
    rates, ttfts = [], []
    for _ in range(repeats):
        def one(i: int) -> dict:
            with httpx.Client(timeout=600) as client:
                body = {"model": model, "messages": [{"role": "user", "content": prompt_of(50)}],
                        "max_tokens": new_tokens, "ignore_eos": True}
                return stream_request(base, body, client)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            results = list(pool.map(one, range(streams)))
        wall = time.perf_counter() - start
        rates.append(sum(r["usage"]["completion_tokens"] for r in results) / wall)
        ttfts.extend(r["ttft"] for r in results)
    return {"streams": streams, "aggregate_tokens_per_s": statistics.median(rates),
            "ttft_median_s": statistics.median(ttfts), "runs": repeats}


def http_overhead(requests: int, chunk_tokens: int) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.null_server", "--port", str(port)], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("null server did not start")
            time.sleep(0.2)
        body = {"model": "smollm2", "max_tokens": 1,
                "messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": "What is the capital of the Netherlands?"}]}
        latencies = []
        with httpx.Client(timeout=60) as client:
            for _ in range(20):  # warm-up
                client.post(f"{base}/v1/chat/completions", json=body)
            client.get(f"{base}/bench/server-times")  # forget the warm-up
            for _ in range(requests):
                start = time.perf_counter()
                client.post(f"{base}/v1/chat/completions", json=body).raise_for_status()
                latencies.append(time.perf_counter() - start)
            inside = sorted(client.get(f"{base}/bench/server-times").json())
            per_chunk = []
            for _ in range(20):
                r = stream_request(base, {**body, "max_tokens": chunk_tokens}, client)
                per_chunk.append((r["stamps"][-1] - r["stamps"][0]) / (len(r["stamps"]) - 1))
        latencies.sort()
        return {"requests": requests, "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                "requests_per_s": len(latencies) / sum(latencies),
                # measured in the server: the app's time per request, without the client's and the socket's
                "server_p50_ms": statistics.median(inside), "server_p99_ms": inside[int(0.99 * (len(inside) - 1))],
                "per_streamed_chunk_ms": 1000 * statistics.median(per_chunk)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    parser.add_argument("--out", default=str(ROOT / "bench/results/serving.json"))
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    new_tokens = 32 if args.quick else 128
    results: dict = {"machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()},
                     "model": args.model, "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results["http_overhead"] = http_overhead(100 if args.quick else 500, 64)
    print(json.dumps(results["http_overhead"]), flush=True)
    tmp = Path(ROOT / "bench/results/logs")
    tmp.mkdir(parents=True, exist_ok=True)
    server = start_server(tmp, "--model", args.model)
    try:
        results["single_stream"] = single_stream(server.base_url, args.model, repeats, new_tokens)
        print(json.dumps(results["single_stream"]), flush=True)
        results["concurrent_4"] = concurrent_streams(server.base_url, args.model, 4, new_tokens,
                                                      1 if args.quick else 3)
        print(json.dumps(results["concurrent_4"]), flush=True)
    finally:
        server.stop()
    single = results["single_stream"]["decode_tokens_per_s"]
    results["concurrent_4"]["ratio_to_single"] = results["concurrent_4"]["aggregate_tokens_per_s"] / single
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
