"""Lodestar side by side with the servers users would pick instead, on the same weights and workloads.

    .venv/bin/python -m bench.compare [--quick] [--peers llama.cpp,transformers] [--out bench/results/compare]
                                      [--budget 900]

One run: each server is started in turn (never two at once: the machine has 2 cores), driven over HTTP by
the same client code (bench/workloads.py), and stopped. Writes results.json and PNG plots into --out and
prints each figure with its target marked met or not. Peers are built on first use into bench/.peers/
(llama-server compiles: ~10 minutes once). A server that exits during a workload is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import workloads
from bench.peers import Running, start_llama_cpp_or_none, start_lodestar, start_transformers_or_none
from bench.plots import plot_all
from bench.serving import http_overhead
from tests.conftest import ROOT


def concurrency_levels(quick: bool) -> tuple[int, ...]:
    return (1, 4) if quick else (1, 2, 4, 8)


def measure(server: Running, quick: bool, budget_s: float, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the workloads in order. One that exceeds `budget_s` stops the server (its clients then fail and
    return), is recorded as over budget, and the workloads after it are not run."""
    result: dict[str, Any] = {"notes": server.notes}
    steps = [
        ("single_stream", lambda: workloads.single_stream(
            server, repeats=2 if quick else 3, new_tokens=32 if quick else 128,
            prompt_sizes=(50, 200) if quick else (50, 200, 800))),
        ("concurrency", lambda: workloads.concurrency(
            server, levels=concurrency_levels(quick), new_tokens=24 if quick else 64,
            repeats=1 if quick else 3)),
        ("multi_turn", lambda: workloads.multi_turn(
            server, conversations=2 if quick else 4, turns=3 if quick else 10, reply_tokens=16 if quick else 24)),
        ("tool_calls", lambda: workloads.tool_calls(server, requests=5 if quick else 50)),
        ("editing", lambda: workloads.editing(server, repeats=2 if quick else 6, max_tokens=160 if quick else 400)),
    ]
    stopped: str | None = None  # why the workloads left are not run
    for name, step in steps:
        if only and name not in only:
            continue
        if stopped:
            result[name] = {"error": f"not run: {stopped}"}
            continue
        started = time.perf_counter()
        outcome: dict[str, Any] = {}

        def run(step: Any = step, outcome: dict[str, Any] = outcome) -> None:
            try:
                outcome["value"] = step()
            except Exception as exc:  # a peer that cannot do a workload is reported, not fatal
                outcome["value"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(budget_s)
        code = server.exit_code()
        if code is not None:  # a server that died is reported as such, never silently
            worker.join(60)
            stopped = f"the server exited (code {code}) during {name}"
            tail = server.log.read_text(errors="replace")[-1500:] if server.log else ""
            outcome["value"] = {"error": stopped, "log_tail": tail, "partial": outcome.get("value")}
        elif worker.is_alive():
            server.stop()  # its streams end, so the worker's client returns
            worker.join(60)
            stopped = "the server was stopped when an earlier workload ran over budget"
            outcome["value"] = {"error": f"over budget: not finished after {budget_s:.0f} s; server stopped"}
        result[name] = outcome["value"]
        print(f"  {server.name} {name} ({time.perf_counter() - started:.0f} s): {json.dumps(result[name])}",
              flush=True)
    return result


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets (issues 8 and 23), each computed from this run's numbers."""
    ours = results["servers"].get("lodestar", {})
    plain = results["servers"].get("lodestar-plain") or ours  # prompt lookup off, when it was run
    llama = results["servers"].get("llama.cpp", {})
    rows = []

    def row(name: str, value: Callable[[], float], goal: str, met: Callable[[float], bool]) -> None:
        try:
            figure = value()
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            rows.append({"target": name, "value": None, "goal": goal, "met": None})
            return
        rows.append({"target": name, "value": figure, "goal": goal, "met": met(figure)})

    def versus(workload: str, pick: Callable[[dict[str, Any]], float],
               lodestar: dict[str, Any] = ours) -> Callable[[], float]:
        return lambda: pick(lodestar[workload]) / pick(llama[workload])

    row("aggregate tokens/s at the most streams (8), Lodestar / llama.cpp",
        versus("concurrency", lambda r: r[max(r, key=int)]["aggregate_tokens_per_s"]), ">= 2", lambda v: v >= 2)
    row("multi-turn TTFT at the last turn, Lodestar / llama.cpp",
        versus("multi_turn", lambda r: r["ttft_by_turn_s"][-1]), "<= 0.1", lambda v: v <= 0.1)
    row("decode tokens/s, one stream, Lodestar without prompt lookup / llama.cpp",
        versus("single_stream", lambda r: r["decode_tokens_per_s"], plain), ">= 1.0", lambda v: v >= 1.0)
    row("decode tokens/s on the editing workload, Lodestar with prompt lookup / llama.cpp",
        versus("editing", lambda r: r["decode_tokens_per_s"]), ">= 1.5", lambda v: v >= 1.5)
    row("TTFT of the longest prompt, Lodestar / llama.cpp",
        versus("single_stream", lambda r: r["ttft_s"][max(r["ttft_s"], key=int)]), "<= 0.25", lambda v: v <= 0.25)

    def scaling() -> float:
        levels = ours["concurrency"]
        return levels[max(levels, key=int)]["aggregate_tokens_per_s"] / levels["1"]["aggregate_tokens_per_s"]

    row("aggregate tokens/s at the most streams / 1 stream (Lodestar)", scaling, ">= 3", lambda v: v >= 3)
    # measured inside the server: the client's own time is not Lodestar's
    row("HTTP layer per request (measured in the server), p50 ms",
        lambda: results["http_overhead"]["server_p50_ms"], "< 2", lambda v: v < 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: under 5 minutes once peers are built")
    parser.add_argument("--peers", default="lodestar-plain,llama.cpp,transformers",
                        help="comma-separated; empty for none (lodestar-plain: Lodestar with prompt lookup off, "
                             "single stream and editing only)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/compare"))
    parser.add_argument("--budget", type=float, default=900.0,
                        help="seconds one workload may take on one server before that server is stopped")
    args = parser.parse_args()
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 2
    results: dict[str, Any] = {
        "machine": {"cpus": threads, "platform": platform.platform(), "python": platform.python_version(),
                    "processor": _cpu_model()},
        "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "servers": {}}
    starters = {"lodestar": lambda: start_lodestar(logs),
                "lodestar-plain": lambda: start_lodestar(logs, "--lookup-tokens", "0", name="lodestar-plain"),
                "llama.cpp": lambda: start_llama_cpp_or_none(logs, threads, max(concurrency_levels(args.quick))),
                "transformers": lambda: start_transformers_or_none(logs)}
    wanted = ["lodestar", *[p.strip() for p in args.peers.split(",") if p.strip()]]
    for name in wanted:
        print(f"starting {name}", flush=True)
        server = starters[name]()
        if isinstance(server, str):  # could not start: the reason
            results["servers"][name] = {"error": server}
            print(f"  {name} did not run: {server[:300]}", flush=True)
            continue
        try:
            only = ("single_stream", "editing") if name == "lodestar-plain" else ()
            results["servers"][server.name] = measure(server, args.quick, args.budget, only)
        finally:
            server.stop()
    results["http_overhead"] = http_overhead(100 if args.quick else 500, 64)
    print(f"  http overhead: {json.dumps(results['http_overhead'])}", flush=True)
    results["targets"] = targets(results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_all(results, out)
    for t in results["targets"]:
        verdict = "met" if t["met"] else ("not met" if t["met"] is False else "not measured")
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"target: {t['target']}: {value} (goal {t['goal']}): {verdict}")
    print(f"wrote {out / 'results.json'} and plots")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
