"""The cost of hostile schemas, bounded: an `allOf` of N distinct `pattern`s, checked the way the server does.

    python -m bench.schema_budget [--sizes 10,14,16,18,20,40,200] [--budget 2.0] [--memory-mib 512]

For each N: the verdict (pass, or the error code), the wall time of the check, and this process's RSS after it
(the check runs in a child process that is killed at the budget or dies at its memory cap, so the server's own
memory must not move). Unbounded, llguidance's cost grows about 2.5x in time and 2x in memory per added pattern.
Writes bench/results/schema-budget-<time>.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.errors import APIError
from tools.checker import GrammarBudget, GrammarChecker
from tools.schema import check_schema

RESULTS = Path(__file__).resolve().parent / "results"


def all_of(n: int) -> dict:
    """One string property that must contain each of n different characters (the DFA needs 2^n states)."""
    letters = [chr(0x61 + i) if i < 26 else chr(0x100 + i) for i in range(n)]
    return {"type": "object", "properties": {"a": {"type": "string", "allOf": [
        {"type": "string", "pattern": f".*{c}.*"} for c in letters]}}}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, str]:
    """The CPU model and its vector flags: results are compared only within one machine."""
    info = {"cpu": "", "flags": ""}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not info["cpu"]:
            info["cpu"] = value.strip()
        elif key.strip() == "flags" and not info["flags"]:
            info["flags"] = " ".join(f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4")))
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,12,14,16,18,20,40,100,200")
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--memory-mib", type=int, default=512)
    args = parser.parse_args()
    checker = GrammarChecker(GrammarBudget(args.budget, args.memory_mib << 20, 1))
    rows = []
    before = rss_mib()
    for n in (int(x) for x in args.sizes.split(",")):
        started = time.perf_counter()
        try:
            check_schema(all_of(n), "tools[0].function.parameters", object_root=True, checker=checker,
                         deadline=checker.deadline())
            verdict = "pass"
        except APIError as exc:
            verdict = f"{exc.status} {exc.code}"
        rows.append({"patterns": n, "verdict": verdict, "seconds": round(time.perf_counter() - started, 3),
                     "server_rss_mib": round(rss_mib(), 1)})
        print(rows[-1], flush=True)
    checker.close()
    result = {"machine": machine(), "budget_s": args.budget, "memory_mib": args.memory_mib,
              "rss_before_mib": round(before, 1),
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"schema-budget-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
