"""Prompt-lookup speculative decoding on and off, on the same workloads, one server at a time.

    .venv/bin/python -m bench.speculative [--rounds 2] [--quick] [--out bench/results/speculative]
    .venv/bin/python -m bench.speculative --step-cost    # what a decode step costs with 1..16 rows

Lodestar with the default model runs with `--lookup-tokens 0` (off) and with the default (on), in turns
(off, on, off, on, ...: a drift of the machine's speed hits both alike), each driven by the same client:
- chat: ordinary questions whose answers copy little, greedy and sampled: decode tokens/s per reply
  (the figure prompt lookup must not lower by more than 3%);
- editing: a code file returned whole after an edit (bench/workloads.py, workload 5): decode tokens/s;
- tool_calls: required calls to a weather tool (workload 4): completion tokens/s, valid share;
- aggregate: 8 concurrent streams: total tokens/s.
For each it prints the median over rounds, the on/off ratio, and how many drafted tokens were kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench import workloads
from bench.compare import _cpu_model
from bench.peers import DATA_DIR, Running, start_lodestar
from engines.embedded.kernels import cpu_flags
from tests.conftest import ROOT

QUESTIONS = (
    "Why do leaves change colour in autumn? Answer in a paragraph.",
    "Give three tips for a first marathon, with a sentence on each.",
    "What is the difference between a process and a thread?",
    "Describe a sunrise over the sea to someone who has never seen one.",
    "How does a refrigerator keep food cold?",
    "Write a short poem about a train at night.",
)


def chat(server: Running, replies: int, max_tokens: int) -> dict[str, Any]:
    """Ordinary chat: half greedy, half sampled (temperature 0.7, seeded); decode tokens/s per reply."""
    rates, tokens = [], 0
    with httpx.Client(timeout=900) as client:
        for i in range(replies):
            sampling = {"temperature": 0.7, "seed": i} if i % 2 else {}
            messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            r = workloads.stream(server, client, messages, max_tokens, **sampling)
            count = r["usage"].get("completion_tokens") or len(r["stamps"])
            tokens += count
            steady = len(r["stamps"]) > 1 and r["stamps"][-1] > r["stamps"][0]
            rates.append((count - 1) / (r["stamps"][-1] - r["stamps"][0]) if steady else 0.0)
    return {"decode_tokens_per_s": statistics.median(rates) if rates else 0.0, "completion_tokens": tokens,
            "per_reply": rates}


def lookup_counts(server: Running) -> tuple[float, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        for name in ("drafted", "kept"):
            if line.startswith(f"lodestar_engine_lookup_{name}_tokens_total "):
                values[name] = float(line.split()[-1])
    return values.get("drafted", 0.0), values.get("kept", 0.0)


def run_round(server: Running, quick: bool, wanted: list[str]) -> dict[str, Any]:
    steps = {
        "chat": lambda: chat(server, replies=4 if quick else 12, max_tokens=64 if quick else 160),
        "editing": lambda: workloads.editing(server, repeats=1 if quick else 3, max_tokens=160 if quick else 400),
        "tool_calls": lambda: workloads.tool_calls(server, requests=5 if quick else 20),
        "aggregate": lambda: workloads.concurrency(server, levels=(8,), new_tokens=32 if quick else 64),
    }
    result: dict[str, Any] = {}
    for name, step in steps.items():
        if name not in wanted:
            continue
        drafted, kept = lookup_counts(server)
        started = time.perf_counter()
        result[name] = step()
        after = lookup_counts(server)
        result[name]["lookup"] = {"drafted": after[0] - drafted, "kept": after[1] - kept}
        print(f"  lookup {server.notes} {name} ({time.perf_counter() - started:.0f} s): "
              f"{json.dumps(result[name])[:300]}", flush=True)
    return result


FIGURES = {"chat": "decode_tokens_per_s", "editing": "decode_tokens_per_s",
           "tool_calls": "completion_tokens_per_s", "aggregate": "aggregate_tokens_per_s"}


def figure(round_: dict[str, Any], workload: str) -> float:
    data = round_[workload]["8"] if workload == "aggregate" else round_[workload]
    return float(data[FIGURES[workload]])


def step_cost(repeats: int = 30) -> None:
    """The default model's decode step (one sequence, 400 tokens cached) with 1..16 rows: the last token and
    up to 15 drafted ones, as the engine runs it (its threads, its kernels)."""
    import torch

    from engines.embedded.decoder import Decoder
    from engines.embedded.kernels import use_one_torch_thread
    from engines.embedded.loader import load_model

    use_one_torch_thread()
    loaded = load_model("default", DATA_DIR)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    decoder = Decoder(loaded.model)
    kernels = loaded.kernels.name if loaded.kernels else "?"
    print(f"{_cpu_model()}; kernels {kernels}; flags {' '.join(cpu_flags())}")
    with torch.inference_mode():
        cache = decoder.new_cache(1024)
        decoder.prefill(cache, list(range(1000, 1400)))
        sizes = (1, 2, 3, 4, 6, 8, 12, 16)
        times: dict[int, list[float]] = {rows: [] for rows in sizes}
        for _ in range(repeats):  # interleaved, so that a drift of the machine's speed hits every size alike
            for rows in sizes:
                cache.length = 400
                started = time.perf_counter()
                decoder.extend([cache], [list(range(7, 7 + rows))])
                times[rows].append(time.perf_counter() - started)
        for rows in sizes:
            print(f"  {rows:2d} rows: {1e3 * statistics.median(times[rows]):6.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--step-cost", action="store_true", help="only time a decode step by rows, and exit")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workloads", default=",".join(FIGURES), help="comma-separated, of " + ", ".join(FIGURES))
    parser.add_argument("--out", default=str(ROOT / "bench/results/speculative"))
    args = parser.parse_args()
    if args.step_cost:
        step_cost()
        return
    out = Path(args.out)
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip() in FIGURES]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": {"processor": _cpu_model(), "cpu_flags": list(cpu_flags())},
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "off": [], "on": []}
    for _ in range(args.rounds):
        for mode, extra in (("off", ("--lookup-tokens", "0")), ("on", ())):
            server = start_lodestar(out / "logs", *extra)
            server.notes = mode
            try:
                results[mode].append(run_round(server, args.quick, wanted))
            finally:
                server.stop()
    results["summary"] = {}
    for workload in wanted:
        off = statistics.median(figure(r, workload) for r in results["off"])
        on = statistics.median(figure(r, workload) for r in results["on"])
        drafted = sum(r[workload]["lookup"]["drafted"] for r in results["on"])
        kept = sum(r[workload]["lookup"]["kept"] for r in results["on"])
        if workload == "chat":  # reply by reply (same question, same sampling): the worst ratio too
            pairs = [(statistics.median(r["chat"]["per_reply"][i] for r in results["on"]),
                      statistics.median(r["chat"]["per_reply"][i] for r in results["off"]))
                     for i in range(len(results["on"][0]["chat"]["per_reply"]))]
            ratios = sorted(on_ / off_ for on_, off_ in pairs if off_)
            results["summary"]["chat_replies"] = {"worst_ratio": ratios[0], "median_ratio": ratios[len(ratios) // 2],
                                                  "ratios": ratios}
            print(f"chat reply by reply: worst on/off {ratios[0]:.3f}, median {ratios[len(ratios) // 2]:.3f}")
        results["summary"][workload] = {"off": off, "on": on, "ratio": on / off if off else None,
                                        "kept_share": kept / drafted if drafted else None,
                                        "kept_per_round": kept / args.rounds}
        print(f"{workload}: {FIGURES[workload]} off {off:.1f}, on {on:.1f}, ratio {on / off if off else 0:.3f}, "
              f"kept {kept:.0f} of {drafted:.0f} drafted", flush=True)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
