"""Relay cost: Lodestar in front of a fake SGLang worker that answers at once, so all the CPU is Lodestar's.

    python -m bench.relay [--mode incremental|cumulative|both] [--tokens 256] [--clients 16] [--seconds 20]
                          [--workers 1 2]

The fake worker (a separate process) speaks SGLang's `/generate` stream: `--tokens` ordinary tokens per
reply, one event each, either only the new `output_ids` (`--incremental-streaming-output`) or all of them
so far (SGLang's default). C clients send streamed chat completions for S seconds. Reported per mode:
Lodestar's CPU per relayed token and per request (utime + stime from /proc, Lodestar's process only), tokens
per second of Lodestar CPU, requests and tokens per second of wall time. The machine's cores are shared
with the client and the fake worker, so CPU per token, not throughput, is the figure to compare.

With `--workers 1 2` each mode runs once per count of server processes (`--workers N`, with C clients per
process: the load per process is the same; the CPU of all of Lodestar's processes counts), and reports
each process's share of the requests (from the pid on each JSON access line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, free_port, start_server

_TICKS = os.sysconf("SC_CLK_TCK")


# -- the fake worker ---------------------------------------------------------------------------------------
class FakeWorker:
    """A raw ASGI app: SGLang's info endpoints and an instant `/generate` stream."""

    def __init__(self, tokens: int, incremental: bool, token_id: int) -> None:
        self.tokens, self.incremental, self.token_id = tokens, incremental, token_id

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/generate":
            return await self._generate(json.loads(body), send)
        if path in ("/model_info", "/get_model_info"):
            payload: dict[str, Any] = {"model_path": "fake", "served_model_name": "fake-model", "is_generation": True}
        elif path in ("/server_info", "/get_server_info"):
            payload = {"context_length": None, "grammar_backend": "llguidance",
                       "incremental_streaming_output": self.incremental, "enable_deterministic_inference": False}
        else:
            payload = {}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _generate(self, req: dict[str, Any], send: Any) -> None:
        rid = req["rid"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        prompt = len(req.get("input_ids") or [])
        for i in range(1, self.tokens + 1):
            ids = [self.token_id] if self.incremental else [self.token_id] * i
            finish = {"type": "length", "length": i} if i == self.tokens else None
            event = {"text": "", "output_ids": ids, "index": 0, "meta_info": {
                "id": rid, "prompt_tokens": prompt, "completion_tokens": i, "cached_tokens": 0,
                "finish_reason": finish}}
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def serve_fake(port: int, tokens: int, incremental: bool, token_id: int) -> None:
    import uvicorn

    uvicorn.run(FakeWorker(tokens, incremental, token_id), host="127.0.0.1", port=port, log_level="warning",
                lifespan="off", access_log=False)


# -- the measurement ---------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


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


def family_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # a process that has ended
            continue
    return total


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
                             str(args.tokens), "--mode", mode], cwd=ROOT)
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
            started = time.monotonic()
            # The same load per process: how far a process falls behind its worker (so how many tokens a
            # chunk carries) depends on it, and so does the CPU per token.
            requests, chunks = asyncio.run(load(base, args.clients * workers, args.seconds, args.tokens))
            wall = time.monotonic() - started
            cpu = family_cpu(pids) - before
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
            "wall_s": round(wall, 1), "lodestar_cpu_s": round(cpu, 2),
            "cpu_us_per_token": round(cpu / tokens * 1e6, 1) if tokens else None,
            "tokens_per_chunk": round(tokens / chunks, 1) if chunks else None,
            "cpu_ms_per_request": round(cpu / requests * 1e3, 2) if requests else None,
            "tokens_per_cpu_second": round(tokens / cpu) if cpu else None,
            "requests_per_s": round(requests / wall, 1), "tokens_per_s": round(tokens / wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Lodestar's relay cost in front of an instant fake SGLang worker")
    parser.add_argument("--mode", choices=["incremental", "cumulative", "both"], default="both")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients per server process")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="smollm2", help="whose tokenizer and template Lodestar uses")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="server process counts to run")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        from transformers import AutoTokenizer

        from core.settings import Settings
        from engines.embedded.loader import resolve_model_folder

        folder, _, _ = resolve_model_folder(args.model, Settings().data_path())
        token_id = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("a")
        serve_fake(args.serve_fake, args.tokens, args.mode == "incremental", int(token_id))
        return
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    modes = ["incremental", "cumulative"] if args.mode == "both" else [args.mode]
    rows = [run_mode(mode, workers, args, results) for mode in modes for workers in args.workers]
    cpu = Path("/proc/cpuinfo").read_text()
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("flags")), [])
    report = {"cpu": model_name, "flags": [f for f in flags if f.startswith(("avx", "amx"))],
              "tokens": args.tokens, "clients": args.clients, "seconds": args.seconds, "rows": rows}
    path = results / f"relay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
