"""Tool-call validity over BFCL prompts: every returned call must parse and match its schema.

    python -m bench.bfcl [--category simple|multiple|parallel|parallel_multiple] [--count 200] [--offset 0]
                         [--tool-choice required|auto] [--parallel-tool-calls default|false] [--concurrency 4]
                         [--server-arg=--tool-call-end-probability=0.1 ...]

Categories: "simple" (one function, one call), "multiple" (several functions, one call), "parallel" (one
function, several calls), "parallel_multiple". Besides validity, each reply is checked for ending as a reply
of calls should (finish_reason "tool_calls", every call valid), for the number of calls BFCL's answer has,
and for tool-call markup left in the content.

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
CATEGORIES = {
    "simple": ("BFCL_v4_simple_python.json", "BFCL_v4_live_simple.json"),
    "multiple": ("BFCL_v4_multiple.json", "BFCL_v4_live_multiple.json"),
    "parallel": ("BFCL_v4_parallel.json", "BFCL_v4_live_parallel.json"),
    "parallel_multiple": ("BFCL_v4_parallel_multiple.json", "BFCL_v4_live_parallel_multiple.json"),
}
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


def load_cases(wheel: Path, category: str, count: int, offset: int = 0) -> list[dict]:
    cases: list[dict] = []
    with zipfile.ZipFile(wheel) as z:
        for name in CATEGORIES[category]:
            expected = {}
            for line in z.read(f"bfcl_eval/data/possible_answer/{name}").decode().splitlines():
                answer = json.loads(line)
                expected[answer["id"]] = len(answer["ground_truth"])
            for line in z.read(f"bfcl_eval/data/{name}").decode().splitlines():
                item = json.loads(line)
                tools = [{"type": "function", "function": {
                    "name": f["name"].replace(".", "_"), "description": f.get("description", ""),
                    "parameters": to_json_schema(f.get("parameters", {"type": "object", "properties": {}}))}}
                    for f in item["function"]]
                cases.append({"id": item["id"], "messages": item["question"][0], "tools": tools,
                              "expected_calls": expected.get(item["id"])})
    return cases[offset: offset + count]


def run_case(client: httpx.Client, base: str, case: dict, tool_choice: str, parallel: bool | None) -> dict:
    start = time.perf_counter()
    body = {"model": "default", "messages": case["messages"], "tools": case["tools"], "tool_choice": tool_choice,
            "temperature": 0, "max_tokens": 256}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    r = client.post(f"{base}/v1/chat/completions", json=body)
    out: dict[str, Any] = {"id": case["id"], "status": r.status_code, "seconds": time.perf_counter() - start}
    if r.status_code != 200:
        out["error"] = r.json().get("error", {}).get("message")
        return out
    choice = r.json()["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
    content = choice["message"].get("content") or ""
    out.update(finish=choice["finish_reason"], calls=len(calls), parsed=0, valid=0,
               expected_calls=case["expected_calls"], debris="<tool_call>" in content or "</tool_call>" in content)
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
    parser = argparse.ArgumentParser(description="Tool-call validity over BFCL prompts")
    parser.add_argument("--category", choices=list(CATEGORIES), default="simple")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--offset", type=int, default=0, help="skip this many prompts (held-out ranges)")
    parser.add_argument("--tool-choice", choices=["required", "auto"], default="required")
    parser.add_argument("--parallel-tool-calls", choices=["default", "false"], default="false",
                        help="default: the field is not sent (OpenAI's default, parallel calls allowed)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--server-arg", action="append", default=[], help="passed to the server (repeat)")
    args = parser.parse_args()
    parallel = None if args.parallel_tool_calls == "default" else False
    results_dir = ROOT / "bench" / "results"
    cases = load_cases(fetch_wheel(results_dir / "bfcl"), args.category, args.count, args.offset)
    server = start_server(results_dir, "--model", "default", *args.server_arg)
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=600) as client, \
                concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            rows = list(pool.map(lambda case: run_case(client, server.base_url, case, args.tool_choice, parallel),
                                 cases))
    finally:
        server.stop()
    answered = [r for r in rows if r["status"] == 200]
    calls = sum(r["calls"] for r in answered)
    summary = {
        "category": args.category, "offset": args.offset, "tool_choice": args.tool_choice,
        "parallel_tool_calls": args.parallel_tool_calls, "server_args": args.server_arg, "prompts": len(rows),
        "answered": len(answered),
        "refused": [r for r in rows if r["status"] != 200],
        "calls": calls, "parsed": sum(r["parsed"] for r in answered), "valid": sum(r["valid"] for r in answered),
        "with_a_call": sum(1 for r in answered if r["calls"]),
        "finish_reasons": {f: sum(1 for r in answered if r["finish"] == f) for f in {r["finish"] for r in answered}},
        "ended_as_calls": sum(1 for r in answered
                              if r["finish"] == "tool_calls" and r["calls"] and r["valid"] == r["calls"]),
        "expected_count": sum(1 for r in answered if r["calls"] == r["expected_calls"]),
        "content_debris": sum(1 for r in answered if r["debris"]),
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
