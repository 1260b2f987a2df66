"""Load test (issue 9): many clients, mixed traffic, against a real server on loopback; pass or fail.

    .venv/bin/python -m bench.load [--clients 16] [--seconds 60] [--warmup 20] [--out bench/results/load.json]

Each client keeps one session (X-Session-ID) and loops over four kinds of turns: a plain streamed reply, a
non-streamed reply, a turn with an image (a PNG data URL), and a turn with a required tool call. The model
is the tiny random-weight Qwen2.5-VL (fixtures/models), the one model here that takes images and tool
calls and is fast enough for 16 clients on 2 cores; its text is noise, the server's work is real.

Pass means: no 5xx and no transport error; every turn a client completed is in its session's transcript;
the p99 queue wait (from the server's lodestar_queue_wait_seconds histogram, to its bucket's upper bound)
within the server's queue timeout; and the server's resident memory over the last 10 s within 5% of the
first 10 s after the warm-up. `--kinds 2` (images only) or `--kinds 0,1` (text only) narrow the mix.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.sse import stream_chunks
from tests.conftest import ROOT, start_server

QUEUE_TIMEOUT_S = 30.0
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a word up.", "parameters": {
    "type": "object", "properties": {"word": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["word"]}}}


@dataclass
class ClientTally:
    session: str
    turns: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


def image_url(seed: int) -> str:
    rng = random.Random(seed)
    image = Image.new("RGB", (64 + 8 * (seed % 5), 64), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def turn_body(model: str, kind: int, turn: int, seed: int) -> dict[str, Any]:
    text = f"Turn {turn}: say something about the number {seed % 97}."
    body: dict[str, Any] = {"model": model, "max_tokens": 12, "temperature": 0.7, "seed": seed}
    if kind == 2:
        body["messages"] = [{"role": "user", "content": [
            {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url(seed)}}]}]
    else:
        body["messages"] = [{"role": "user", "content": text}]
    if kind == 3:
        body.update(tools=[TOOL], tool_choice="required", parallel_tool_calls=False, max_tokens=40)
    body["stream"] = kind != 1
    return body


def run_client(base: str, model: str, index: int, deadline: float, tally: ClientTally,
               kinds: list[int]) -> None:
    headers = {"X-Session-ID": tally.session}
    with httpx.Client(timeout=120) as client:
        position = index % len(kinds)
        while time.monotonic() < deadline:
            kind = kinds[position]
            body = turn_body(model, kind, tally.turns, index * 1000 + tally.turns)
            started = time.perf_counter()
            try:
                if body["stream"]:
                    first = None
                    for _chunk in stream_chunks(client, base, body, headers):
                        first = first or time.perf_counter()
                    tally.ttfts.append((first or time.perf_counter()) - started)
                    status = 200
                else:
                    response = client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
                    status = response.status_code
                    tally.ttfts.append(time.perf_counter() - started)
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
            except httpx.TransportError as exc:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            if status == 200:
                tally.turns += 1
            position = (position + 1) % len(kinds)


def queue_wait_p99(metrics_text: str) -> float:
    """The upper bound of the histogram bucket holding the 99th percentile of lodestar_queue_wait_seconds."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith("lodestar_queue_wait_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    return next((bound for bound, count in buckets if count >= 0.99 * total), float("inf")) if total else 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--out", default=str(ROOT / "bench/results/load.json"))
    parser.add_argument("--kinds", default="0,1,2,3",
                        help="turn kinds each client cycles through: 0 streamed, 1 non-streamed, 2 image, 3 tool")
    parser.add_argument("--prefix-cache-mib", type=int, default=256, help="the server's prefix-cache budget")
    args = parser.parse_args()
    kinds = [int(k) for k in args.kinds.split(",")]
    from fixtures.models.tiny_qwen2_5_vl import DEFAULT_OUT, build, default_tokenizer_folder

    model = build(DEFAULT_OUT, default_tokenizer_folder())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sessions = out.with_suffix(".sessions.sqlite3")  # a fresh store: turns from earlier runs must not count
    sessions.unlink(missing_ok=True)
    server = start_server(out.parent, "--model", str(model), "--max-queue", "64", "--sessions-path", str(sessions),
                          "--queue-timeout-s", str(QUEUE_TIMEOUT_S),
                          "--prefix-cache-bytes", str(args.prefix_cache_mib << 20))
    try:
        base = server.base_url
        model_id = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        deadline = time.monotonic() + args.warmup + args.seconds
        run_id = uuid.uuid4().hex[:8]
        tallies = [ClientTally(f"load:{run_id}:{i}") for i in range(args.clients)]
        threads = [threading.Thread(target=run_client, args=(base, model_id, i, deadline, t, kinds),
                                    daemon=True)
                   for i, t in enumerate(tallies)]
        for thread in threads:
            thread.start()
        # (seconds since the warm-up ended, RSS MiB, prefix-cache MiB): the cache is bounded and fills up
        # over a run; telling its growth apart from the rest shows whether anything else grows.
        samples: list[tuple[float, float, float]] = []
        measure_from = time.monotonic() + args.warmup
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= measure_from:
                engine = httpx.get(f"{base}/ready", timeout=30).json()["engine"]
                samples.append((now - measure_from, rss_mib(server.proc.pid),
                                engine.get("prefix_cache_bytes", 0) / (1 << 20)))
            time.sleep(1.0)
        for thread in threads:
            thread.join(180)
        stuck = sum(thread.is_alive() for thread in threads)
        queue_p99 = queue_wait_p99(httpx.get(f"{base}/metrics", timeout=30).text)
        lost = []
        for tally in tallies:
            stored = httpx.get(f"{base}/v1/sessions/{tally.session}", timeout=30)
            stored_turns = stored.json()["turns"] if stored.status_code == 200 else 0
            if stored_turns != tally.turns:
                lost.append({"session": tally.session, "completed": tally.turns, "stored": stored_turns})
    finally:
        server.stop()

    statuses: dict[str, int] = {}
    for tally in tallies:
        for status, count in tally.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    ttfts = sorted(t for tally in tallies for t in tally.ttfts)
    p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] if ttfts else float("inf")
    first = [s for s in samples if s[0] < 10]
    last = [s for s in samples if s[0] >= samples[-1][0] - 10] if samples else []

    def mean(rows: list[tuple[float, float, float]], column: int) -> float:
        return statistics.mean(row[column] for row in rows)

    growth = (mean(last, 1) / mean(first, 1) - 1) if first and last else float("inf")
    errors = [e for tally in tallies for e in tally.errors]
    checks = {
        "no 5xx": not any(int(s) >= 500 for s in statuses),
        "no transport errors": not errors,
        "no client stuck": stuck == 0,
        "no lost session turns": not lost,
        f"p99 queue wait <= queue timeout ({QUEUE_TIMEOUT_S:g} s)": queue_p99 <= QUEUE_TIMEOUT_S,
        "RSS growth last 10 s vs first 10 s < 5%": growth < 0.05,
    }
    result = {
        "clients": args.clients, "seconds": args.seconds, "warmup_s": args.warmup,
        "turns": sum(t.turns for t in tallies), "statuses": statuses, "errors": errors[:10], "lost": lost,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None, "ttft_p99_s": p99,
        "queue_wait_p99_bucket_s": queue_p99,
        "kinds": kinds, "rss_series_mib": [round(s[1]) for s in samples],
        "rss_first_10s_mib": mean(first, 1) if first else None,
        "rss_last_10s_mib": mean(last, 1) if last else None, "rss_growth": growth,
        "prefix_cache_first_10s_mib": mean(first, 2) if first else None,
        "prefix_cache_last_10s_mib": mean(last, 2) if last else None,
        "checks": checks, "passed": all(checks.values()), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
