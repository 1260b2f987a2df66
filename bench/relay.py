"""Relay cost: Lodestar in front of a fake SGLang worker that answers at once, so all the CPU is Lodestar's.

    python -m bench.relay [--mode incremental|cumulative|both] [--tokens 256] [--clients 16] [--seconds 20]
                          [--workers 1 2] [--repeat R] [--pace-ms P]

The fake worker (bench/fake_sglang.py, a separate process) speaks SGLang's `/generate` stream: `--tokens`
ordinary tokens per reply, one event and one HTTP chunk each, either only the new `output_ids`
(`--incremental-streaming-output`) or all of them so far (SGLang's default). A reply is written at once: the
worker is never what a relay waits for, so every run relays the same tokens per chunk. With `--pace-ms P` a
stream's events come P ms apart instead, as from a GPU worker the relay keeps up with: then every token is a
chunk of its own.

C clients send streamed chat completions for S seconds. Reported per mode: Lodestar's CPU per relayed token
and per request (utime + stime from /proc, Lodestar's processes only; `system_share` is the kernel's part),
tokens per second of Lodestar CPU, tokens per content chunk, requests and tokens per second of wall time.
The machine's cores are shared with the client and the fake worker, so CPU per token, not throughput, is
the figure to compare.

With `--workers 1 2` each mode runs once per count of server processes (`--workers N`; the same C clients in
all: the same offered load, spread over the processes; the CPU of all of Lodestar's processes counts), and
reports each process's share of the requests (from the pid on each JSON access line). `--repeat R` runs R
rounds of all of it in turn and summarises each configuration by its median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.fake_sglang import serve_fake
from tests.conftest import ROOT, free_port, start_server

_TICKS = os.sysconf("SC_CLK_TCK")


# -- the measurement ---------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS  # utime, stime


def family(pid: int) -> list[int]:
    """A process and its children (the server processes of --workers N; not grandchildren)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return [pid, *children]


def family_cpu(pids: list[int]) -> tuple[float, float]:
    """The user and system CPU seconds of the processes."""
    user = system = 0.0
    for pid in pids:
        try:
            u, s = cpu_seconds(pid)
        except OSError:  # a process that has ended
            continue
        user, system = user + u, system + s
    return user, system


def requests_per_process(log: str) -> dict[int, int]:
    """Requests served by each process, from the chat route's JSON access lines."""
    counts: dict[int, int] = {}
    for line in log.splitlines():
        if line.startswith("{") and '"lodestar.access"' in line and "/v1/chat/completions" in line:
            pid = json.loads(line)["pid"]
            counts[pid] = counts.get(pid, 0) + 1
    return counts


async def load(base: str, clients: int, seconds: float, max_tokens: int) -> tuple[int, int]:
    """C clients sending streamed requests back to back for `seconds`: (requests, content chunks)."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "stream": True}
    deadline = time.monotonic() + seconds
    done = [0, 0]

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        done[1] += 1
            done[0] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done[0], done[1]


def run_mode(mode: str, workers: int, args: argparse.Namespace, results: Path) -> dict[str, Any]:
    port = free_port()
    # An ordinary token of the model's vocabulary (a letter), so every event adds text to relay.
    fake = subprocess.Popen([sys.executable, "-m", "bench.relay", "--serve-fake", str(port), "--tokens",
                             str(args.tokens), "--mode", mode, "--pace-ms", str(args.pace_ms)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or fake.poll() is not None:
                    raise RuntimeError("the fake worker did not start") from None
                time.sleep(0.2)
        server = start_server(results, "--engine", "sglang", "--sglang-url", f"http://127.0.0.1:{port}",
                              "--model", args.model, "--sglang-health-interval-s", "0", "--log-format", "json",
                              "--workers", str(workers))
        try:
            base = server.base_url
            deadline = time.monotonic() + 120
            while server.log().count("Application startup complete") < workers:  # each process listens
                if time.monotonic() > deadline:                                    # once it can serve
                    raise RuntimeError("not every server process started")
                time.sleep(0.2)
            asyncio.run(load(base, 2 * workers, 2.0, args.tokens))  # warm-up: connections, first requests
            pids = family(server.proc.pid)
            before, served_before = family_cpu(pids), requests_per_process(server.log())
            opened = worker_connections(port)
            started = time.monotonic()
            requests, chunks = asyncio.run(load(base, args.clients, args.seconds, args.tokens))
            wall = time.monotonic() - started
            after = family_cpu(pids)
            opened = worker_connections(port) - opened
            user, system = after[0] - before[0], after[1] - before[1]
            cpu = user + system
            time.sleep(0.5)  # the last access lines
            served = requests_per_process(server.log())
        finally:
            server.stop()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    tokens = requests * args.tokens
    shares = {pid: n - served_before.get(pid, 0) for pid, n in served.items()}
    shares = {pid: round(n / requests, 3) for pid, n in shares.items() if n} if requests else {}
    return {"mode": mode, "workers": workers, "process_shares": sorted(shares.values(), reverse=True),
            "requests": requests, "tokens": tokens, "content_chunks": chunks,
            "wall_s": round(wall, 1), "lodestar_cpu_s": round(cpu, 2), "system_share": round(system / cpu, 2),
            "cpu_us_per_token": round(cpu / tokens * 1e6, 1) if tokens else None,
            "tokens_per_chunk": round(tokens / chunks, 1) if chunks else None,
            "cpu_ms_per_request": round(cpu / requests * 1e3, 2) if requests else None,
            "tokens_per_cpu_second": round(tokens / cpu) if cpu else None,
            "requests_per_s": round(requests / wall, 1), "tokens_per_s": round(tokens / wall),
            "worker_connections_opened": opened}


def worker_connections(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/bench_stats", timeout=5).json()["connections"]) - 1  # this one


def summary(rows: list[dict[str, Any]], workers: list[int]) -> list[dict[str, Any]]:
    """Per mode and process count: the median and range of the CPU per token over the rounds, the smallest
    process share, and the median's ratio to the fewest processes' median."""
    out = []
    for mode in dict.fromkeys(row["mode"] for row in rows):
        base = None
        for count in workers:
            runs = [row for row in rows if row["mode"] == mode and row["workers"] == count]
            per_token = sorted(row["cpu_us_per_token"] for row in runs)
            median = statistics.median(per_token)
            base = base or median
            out.append({"mode": mode, "workers": count, "rounds": len(runs), "cpu_us_per_token_median": median,
                        "cpu_us_per_token_range": [per_token[0], per_token[-1]],
                        "cpu_ms_per_request_median": statistics.median(row["cpu_ms_per_request"] for row in runs),
                        "ratio_to_first": round(median / base, 3),
                        "smallest_process_share": min(min(row["process_shares"]) for row in runs)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Lodestar's relay cost in front of an instant fake SGLang worker")
    parser.add_argument("--mode", choices=["incremental", "cumulative", "both"], default="both")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply")
    parser.add_argument("--clients", type=int, default=16, help="concurrent streamed clients")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="smollm2", help="whose tokenizer and template Lodestar uses")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="server process counts to run")
    parser.add_argument("--pace-ms", type=float, default=0.0,
                        help="the worker sends a stream's events this far apart (0: a whole reply at once)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds: each runs every mode and process count once, in turn (the summary: medians)")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        from transformers import AutoTokenizer

        from core.settings import Settings
        from engines.embedded.loader import resolve_model_folder

        folder, _, _ = resolve_model_folder(args.model, Settings().data_path())
        token_id = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("a")
        serve_fake(args.serve_fake, args.tokens, args.mode == "incremental", int(token_id), args.pace_ms / 1000)
        return
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    modes = ["incremental", "cumulative"] if args.mode == "both" else [args.mode]
    # Rounds alternate the configurations, so that a slow minute of a shared machine does not fall on one.
    rows = [run_mode(mode, workers, args, results)
            for _ in range(args.repeat) for mode in modes for workers in args.workers]
    cpu = Path("/proc/cpuinfo").read_text()
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("flags")), [])
    report = {"cpu": model_name, "flags": [f for f in flags if f.startswith(("avx", "amx"))],
              "tokens": args.tokens, "clients": args.clients, "seconds": args.seconds, "pace_ms": args.pace_ms,
              "summary": summary(rows, args.workers), "rows": rows}
    path = results / f"relay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
