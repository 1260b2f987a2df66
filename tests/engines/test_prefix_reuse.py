"""The prefix cache inside the embedded engine, on the real SmolLM2-135M (fp32): reused prefixes give the
same tokens as a full prefill, and the events report how many prompt tokens were reused."""

from __future__ import annotations

from typing import Any

from engines.base import EngineEvent
from engines.embedded.decoder import Decoder
from engines.embedded.engine import EmbeddedEngine
from engines.embedded.loader import LoadedModel
from tests.engines.test_scheduler import (
    LONG_QUESTION,
    QUESTION,
    collect,
    facts_of,
    fp32,
    manual_greedy,
    request,
    run_engine,
    tokens_of,
)
from tests.engines.test_vision import noise, prompt, vl

__all__ = ["fp32", "vl"]

CACHE = {"prefix_cache_bytes": 256 << 20}


def continue_chat(tokenizer: Any, first: str, reply: list[int], second: str) -> list[int]:
    """The next turn's prompt, built the way a session continues: earlier ids, then the new turn."""
    before = tokenizer.apply_chat_template([{"role": "user", "content": first}], add_generation_prompt=True,
                                           tokenize=False)
    ids = tokenizer(before, add_special_tokens=False)["input_ids"] + reply
    turn = f"<|im_end|>\n<|im_start|>user\n{second}<|im_end|>\n<|im_start|>assistant\n"
    return ids + tokenizer(turn, add_special_tokens=False)["input_ids"]


def test_same_prompt_twice_reuses_all_but_the_last_token(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompt = chat_ids(LONG_QUESTION)

    async def body(engine: EmbeddedEngine) -> list[dict[int, list[EngineEvent]]]:
        return [await collect(engine.generate(request(prompt, request_id=f"r{i}", max_new_tokens=6)))
                for i in range(2)]

    first, second = run_engine(fp32, body, **CACHE)
    assert all(f.cached_tokens == 0 for f in facts_of(first[0]))
    assert all(f.cached_tokens == len(prompt) - 1 for f in facts_of(second[0]))
    assert tokens_of(second[0]) == tokens_of(first[0]) == manual_greedy(decoder, prompt, 6)


def test_next_turn_reuses_prompt_and_reply(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    prompt = chat_ids(QUESTION)
    stop = fp32.tokenizer.convert_tokens_to_ids("<|im_end|>")

    async def body(engine: EmbeddedEngine) -> tuple[list[int], dict[int, list[EngineEvent]], list[int]]:
        reply = tokens_of((await collect(engine.generate(
            request(prompt, request_id="t1", max_new_tokens=12, stop_token_ids=(stop,)))))[0])
        reply = [t for t in reply if t != stop]
        turn2 = continue_chat(fp32.tokenizer, QUESTION, reply, "And of Italy?")
        return reply, await collect(engine.generate(request(turn2, request_id="t2", max_new_tokens=5))), turn2

    reply, second, turn2 = run_engine(fp32, body, **CACHE)
    cached = facts_of(second[0])[0].cached_tokens
    # Everything fed to the model in turn 1 is reused: the prompt and the reply (bar its last token).
    assert cached >= len(prompt) + len(reply) - 1
    assert cached < len(turn2)
    assert tokens_of(second[0]) == manual_greedy(decoder, turn2, 5)


def test_diverging_prompts_share_their_common_prefix(fp32: LoadedModel, decoder: Decoder, chat_ids) -> None:
    a, b = chat_ids(LONG_QUESTION), chat_ids(LONG_QUESTION.replace("one sentence", "three words"))
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)

    async def body(engine: EmbeddedEngine):
        await collect(engine.generate(request(a, request_id="a", max_new_tokens=2)))
        return await collect(engine.generate(request(b, request_id="b", max_new_tokens=4)))

    events = run_engine(fp32, body, **CACHE)[0]
    assert facts_of(events)[0].cached_tokens == common
    assert tokens_of(events) == manual_greedy(decoder, b, 4)


def test_cache_off_reports_zero(fp32: LoadedModel, chat_ids) -> None:
    prompt = chat_ids(QUESTION)

    async def body(engine: EmbeddedEngine):
        return [await collect(engine.generate(request(prompt, request_id=f"r{i}", max_new_tokens=2)))
                for i in range(2)]

    for result in run_engine(fp32, body, prefix_cache_bytes=0):
        assert all(f.cached_tokens == 0 for f in facts_of(result[0]))


def test_image_prompts_share_a_prefix_only_with_the_same_images(vl) -> None:
    loaded, vision, _ = vl
    first_image = vision.prepare(noise(80, 80, 5), "img-a", 100_000)
    other_image = vision.prepare(noise(80, 80, 6), "img-b", 100_000)

    async def body(engine: EmbeddedEngine):
        out = []
        for i, image in enumerate((first_image, first_image, other_image)):
            req = request(prompt(loaded, vision, [image], expanded=False), request_id=f"v{i}", max_new_tokens=3)
            req.images = [image]
            out.append(await collect(engine.generate(req)))
        return out

    same = prompt(loaded, vision, [first_image])
    first_pad = same.index(vision.image_token_id)
    a, again, other = (r[0] for r in run_engine(loaded, body, **CACHE))
    assert facts_of(a)[0].cached_tokens == 0
    assert facts_of(again)[0].cached_tokens == len(same) - 1
    assert tokens_of(again) == tokens_of(a)  # reused image KV and M-RoPE positions give the same output
    assert facts_of(other)[0].cached_tokens == first_pad  # the text before the image, not the other image's tokens
