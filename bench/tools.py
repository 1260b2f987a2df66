"""Grammar-constrained decoding costs: compile time for a 10-tool request, and per-token overhead.

    python -m bench.tools [--repeats 5]

1. Compile: the tools stage (schema checks + grammar building, cold: new schemas each time) and the
   llguidance compile of a 10-tool `required` grammar including its first mask, cold (new grammar) and
   cached (same tools again: the compiled grammar is reused).
2. Mask cost: the time GrammarState.restrict + advance take per token while following a real tool call.
3. Decode tokens/s in the embedded engine with the default model (int8): a constrained reply (the 10-tool
   `required` grammar) against an unconstrained one of the same length from the same prompt, measured
   from the first to the last token so prompt processing is left out.

Writes bench/results/tools-<time>.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import msgspec
import torch

from chat.families import FAMILIES
from core.protocol import request_decoder
from core.settings import ToolSettings
from engines.embedded.grammar import GrammarCompiler
from engines.embedded.loader import resolve_model_folder
from tests.conftest import ROOT
from tools.checker import GrammarChecker
from tools.request import plan_tools

CHECKER = GrammarChecker()  # the server's schema checks, in child processes


def ten_tools(salt: str = "") -> list[dict]:
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": f"Tool number {i}{salt}",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "maxLength": 200, "description": "search text" + salt},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
            "mode": {"type": "string", "enum": ["fast", "exact", "fuzzy"]},
            "filters": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "value": {"type": "string"}}, "required": ["field", "value"]},
                "maxItems": 5}},
            "required": ["query"]}}} for i in range(10)]


class _Renderer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.family = FAMILIES["qwen2"]


def _plan(renderer: _Renderer, salt: str):
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "tools": ten_tools(salt),
            "tool_choice": "required"}
    return plan_tools(request_decoder.decode(msgspec.json.encode(body)), ToolSettings(), renderer, CHECKER)


def compile_times(tokenizer, repeats: int) -> dict:
    """Times to a usable matcher (compile + the first mask): the process's first grammar, a new grammar
    (new schemas of the same shapes), and the same grammar again (cached)."""
    compiler = GrammarCompiler(tokenizer, 151936)
    renderer = _Renderer(tokenizer)
    logits = torch.zeros(151936)

    def ready(constraint) -> float:
        start = time.perf_counter()
        compiler.state(constraint).restrict(logits)
        return (time.perf_counter() - start) * 1000

    plan_ms, cold_ms, cached_ms = [], [], []
    first = ready(_plan(renderer, "first").constraint)
    for r in range(repeats):
        start = time.perf_counter()
        plan = _plan(renderer, f"_{r}")
        plan_ms.append((time.perf_counter() - start) * 1000)
        cold_ms.append(ready(plan.constraint))
        cached_ms.append(ready(plan.constraint))
    return {"tools_stage_cold_ms": round(statistics.median(plan_ms), 2), "first_grammar_in_process_ms": round(first, 1),
            "new_grammar_ms": round(statistics.median(cold_ms), 2),
            "cached_grammar_ms": round(statistics.median(cached_ms), 3)}


def mask_cost(tokenizer) -> dict:
    compiler = GrammarCompiler(tokenizer, 151936)
    plan = _plan(_Renderer(tokenizer), "")
    assert plan.constraint is not None
    compiler.state(plan.constraint).restrict(torch.zeros(151936))  # the one-time first use, measured above
    text = ('<tool_call>\n{"name": "tool_3", "arguments": {"query": "weather in Paris tomorrow", "limit": 5, '
            '"mode": "exact", "filters": [{"field": "country", "value": "France"}]}}\n</tool_call>')
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    state = compiler.state(plan.constraint)
    logits = torch.zeros(151936)
    times = []
    for token in ids:
        start = time.perf_counter()
        state.restrict(logits)
        state.advance(token)
        times.append((time.perf_counter() - start) * 1e6)
        logits.zero_()
    return {"tokens": len(ids), "median_us": round(statistics.median(times), 1),
            "p90_us": round(sorted(times)[int(len(times) * 0.9)], 1), "max_us": round(max(times), 1)}


def end_to_end(tokenizer, repeats: int) -> dict:
    """Decode tokens/s inside the engine, from the first to the last token event (prompt processing and
    HTTP left out; the tool-call parser buffers a call, so HTTP chunk times would not show decoding)."""
    import asyncio

    from chat.template import PromptRenderer
    from core.settings import SchedulerSettings
    from engines.base import EngineRequest, SamplingParams
    from engines.embedded.engine import EmbeddedEngine
    from engines.embedded.loader import load_model

    loaded = load_model("default", Path("~/.local/share/lodestar").expanduser())
    engine_holder: list[EmbeddedEngine] = []
    renderer = PromptRenderer(loaded.tokenizer, FAMILIES["qwen2"])
    plan = _plan(_Renderer(tokenizer), "")
    body = [msgspec.json.decode(msgspec.json.encode({"role": "user", "content":
                                                     "Search for the weather in Paris tomorrow, exact mode."}))]
    from core.protocol import UserMessage
    prompt = renderer.render([msgspec.convert(body[0], UserMessage)], plan.template_tools)

    async def rate(constraint, tokens: int, ignore_eos: bool) -> tuple[int, float]:
        engine = engine_holder[0]
        stops = () if ignore_eos else renderer.stop_token_ids
        req = EngineRequest(request_id=f"r{time.monotonic_ns()}", prompt_ids=prompt, constraint=constraint,
                            sampling=SamplingParams(max_new_tokens=tokens, temperature=0.0, stop_token_ids=stops))
        times = []
        async for _event in engine.generate(req):
            times.append(time.perf_counter())
        return len(times), (len(times) - 1) / (times[-1] - times[0])

    async def run() -> dict:
        engine_holder.append(EmbeddedEngine(
            loaded, scheduler=SchedulerSettings(max_batch_size=1, prefix_cache_bytes=0)))
        try:
            constrained, free = [], []
            for _ in range(repeats):
                tokens, r = await rate(plan.constraint, 120, False)
                constrained.append(r)
                free.append((await rate(None, tokens, True))[1])
            c, f = statistics.median(constrained), statistics.median(free)
            return {"completion_tokens": tokens, "constrained_tok_s": round(c, 1),
                    "unconstrained_tok_s": round(f, 1), "ratio": round(c / f, 3)}
        finally:
            await engine_holder[0].close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description="Lodestar grammar benchmarks")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    folder, _, _ = resolve_model_folder("default", Path("~/.local/share/lodestar").expanduser())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results = {"compile_10_tools": compile_times(tokenizer, args.repeats), "mask_per_token": mask_cost(tokenizer),
               "decode": end_to_end(tokenizer, args.repeats)}
    out = ROOT / "bench" / "results" / f"tools-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
