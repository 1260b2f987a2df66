"""Tool-call validity over BFCL "simple" prompts: every returned call must parse and match its schema.

    python -m bench.bfcl [--count 200] [--concurrency 4]

The prompts come from the `bfcl-eval` package (Berkeley Function-Calling Leaderboard, Apache-2.0), fetched
from PyPI on first use into bench/results/bfcl/ (only its data files are read; it is not installed).
BFCL writes parameter types in Python's words ("dict", "float", "tuple", "any"); they are converted to
JSON Schema. Each prompt is sent with its function(s) and tool_choice "required" to a real server on the
default model. Counted: requests answered, calls returned, and calls whose arguments parse as JSON and
validate against the schema (jsonschema). Whether the arguments are the *right* ones (BFCL's accuracy
score) is a property of the model, not of the server, and is not measured here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from tests.conftest import ROOT, start_server

VERSION = "2026.3.23"
FILES = ("bfcl_eval/data/BFCL_v4_simple_python.json", "bfcl_eval/data/BFCL_v4_live_simple.json")
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "int": "integer",
          "str": "string", "bool": "boolean"}


def fetch_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"bfcl_eval-{VERSION}-py3-none-any.whl"
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"bfcl-eval=={VERSION}",
                        "-d", str(folder)], check=True)
    return wheel


def to_json_schema(node: Any) -> Any:
    """BFCL's Python-flavoured schema -> JSON Schema (types renamed, "any" dropped, "optional" ignored)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            if value != "any":
                out["type"] = _TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            out[key] = to_json_schema(value)
        elif key == "optional":
            continue
        else:
            out[key] = value
    return out


def load_cases(wheel: Path, count: int) -> list[dict]:
    cases: list[dict] = []
    with zipfile.ZipFile(wheel) as z:
        for name in FILES:
            for line in z.read(name).decode().splitlines():
                item = json.loads(line)
                tools = [{"type": "function", "function": {
                    "name": f["name"].replace(".", "_"), "description": f.get("description", ""),
                    "parameters": to_json_schema(f.get("parameters", {"type": "object", "properties": {}}))}}
                    for f in item["function"]]
                cases.append({"id": item["id"], "messages": item["question"][0], "tools": tools})
                if len(cases) == count:
                    return cases
    return cases


def run_case(client: httpx.Client, base: str, case: dict) -> dict:
    start = time.perf_counter()
    r = client.post(f"{base}/v1/chat/completions", json={
        "model": "default", "messages": case["messages"], "tools": case["tools"], "tool_choice": "required",
        "parallel_tool_calls": False, "temperature": 0, "max_tokens": 256})
    out: dict[str, Any] = {"id": case["id"], "status": r.status_code, "seconds": time.perf_counter() - start}
    if r.status_code != 200:
        out["error"] = r.json().get("error", {}).get("message")
        return out
    choice = r.json()["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
    out.update(finish=choice["finish_reason"], calls=len(calls), parsed=0, valid=0)
    for call in calls:
        try:
            arguments = json.loads(call["function"]["arguments"])
        except ValueError:
            continue
        out["parsed"] += 1
        schema = schemas.get(call["function"]["name"])
        if schema is not None and not list(jsonschema.Draft202012Validator(schema).iter_errors(arguments)):
            out["valid"] += 1
        else:
            out.setdefault("invalid", []).append(call["function"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Tool-call validity over BFCL simple prompts")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    results_dir = ROOT / "bench" / "results"
    cases = load_cases(fetch_wheel(results_dir / "bfcl"), args.count)
    server = start_server(results_dir, "--model", "default")
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=600) as client, \
                concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(lambda case: run_case(client, server.base_url, case), cases))
    finally:
        server.stop()
    answered = [r for r in rows if r["status"] == 200]
    calls = sum(r["calls"] for r in answered)
    summary = {
        "prompts": len(rows), "answered": len(answered), "refused": [r for r in rows if r["status"] != 200],
        "calls": calls, "parsed": sum(r["parsed"] for r in answered), "valid": sum(r["valid"] for r in answered),
        "with_a_call": sum(1 for r in answered if r["calls"]),
        "finish_reasons": {f: sum(1 for r in answered if r["finish"] == f) for f in {r["finish"] for r in answered}},
        "median_seconds": round(statistics.median(r["seconds"] for r in rows), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "invalid": [r for r in answered if r.get("invalid")],
    }
    path = results_dir / f"bfcl-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
