"""SGLang's native `/generate` contract, the request side: an EngineRequest as the JSON body (the streamed
replies are read by replies.py).

The body holds only fields of SGLang's published contract (sglang/api/v1/api_types.py; the contract tests
decode every body with it). Choices are sent as a batch of identical prompts, one rid and one seed each, so
`n` seeded choices differ the way they do on the embedded engine.
"""

from __future__ import annotations

from typing import Any

from engines.base import EngineRequest

# Seeds beyond this are folded: SGLang reads sampling_seed as a signed 64-bit integer.
_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF


def choice_rids(req: EngineRequest) -> list[str]:
    return [req.request_id] if req.n == 1 else [f"{req.request_id}-{i}" for i in range(req.n)]


def sampling_params(req: EngineRequest, index: int) -> dict[str, Any]:
    s = req.sampling
    params: dict[str, Any] = {
        "max_new_tokens": s.max_new_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
        "stop_token_ids": list(s.stop_token_ids),
        "skip_special_tokens": False,  # the text is ours (from output_ids); keep SGLang's work minimal
    }
    if s.stop:
        params["stop"] = list(s.stop)  # the worker ends early; the pipeline still cuts the text
    if s.ignore_eos:
        params["ignore_eos"] = True  # else the worker stops at the model's EOS whatever stop_token_ids says
    if s.top_k > 0:
        params["top_k"] = s.top_k
    if s.min_new_tokens:
        params["min_new_tokens"] = s.min_new_tokens
    if s.seed is not None:
        params["sampling_seed"] = (s.seed + index) & _SEED_MASK
    if req.constraint is not None:
        # llguidance reads Lark grammars as "ebnf": the workers run --grammar-backend llguidance.
        params["ebnf"] = req.constraint.grammar
    if s.logit_bias:
        # SGLang's own shape: token ids as decimal strings -> floats, added after its grammar mask.
        params["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    return params


def generate_body(req: EngineRequest, *, prompt: list[int] | str, image_urls: list[str]) -> dict[str, Any]:
    """The JSON body of one streamed `/generate` call for all of the request's choices."""
    n = req.n
    prompt_key = "text" if isinstance(prompt, str) else "input_ids"
    body: dict[str, Any] = {"stream": True}
    if n == 1:
        body.update({"rid": req.request_id, prompt_key: prompt, "sampling_params": sampling_params(req, 0)})
        if image_urls:
            body["image_data"] = list(image_urls)
    else:
        body.update({"rid": choice_rids(req), prompt_key: [prompt] * n,
                     "sampling_params": [sampling_params(req, i) for i in range(n)]})
        if image_urls:
            body["image_data"] = [list(image_urls) for _ in range(n)]
    if req.logprobs:
        body["return_logprob"] = True
        body["top_logprobs_num"] = req.top_logprobs
    return body
