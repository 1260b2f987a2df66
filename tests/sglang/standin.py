"""A stand-in SGLang worker for the contract tests: SGLang's HTTP contract, Lodestar's embedded engine inside.

Every `/generate` body is decoded with `decode_GenerateRequest` from SGLang's own published types
(sglang/api/v1/api_types.py, from the pinned wheel), so a field or type SGLang would reject fails the test
with SGLang's 400. Every reply is built with `GenerateResponse`/`GenerateMetaInfo` and encoded with
`encode_GenerateResponse`. The tokens come from a real model (the embedded engine), so grammars, reasoning
budgets and the prefix cache behave as they would on a GPU.

Run in-process with `StandIn(...).serve_in_thread(port)`, or as `python -m tests.sglang.standin
--model-path M --port P` (sglang.launch_server's flags), which the launcher test uses.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import importlib.util
import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from engines.base import Constraint, EngineError, EngineRequest, SamplingParams
from engines.embedded.vision import expand_placeholders


def load_contract() -> ModuleType:
    """SGLang's api_types module, loaded from the installed wheel without importing `sglang` itself (its
    package __init__ needs the CUDA stack; this file needs only msgspec)."""
    try:  # by distribution, not sys.path: the launcher test shadows `sglang` with a shim
        path = Path(str(importlib.metadata.distribution("sglang").locate_file("sglang/api/v1/api_types.py")))
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("the sglang wheel is not installed (make setup installs it with --no-deps)") from None
    module_spec = importlib.util.spec_from_file_location("sglang_api_types", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


API = load_contract()
_NO_TOP_K = 1 << 30  # SGLang's "no top-k"
FLOAT32_MIN = -3.4028234663852886e38  # torch.finfo(torch.float32).min


@dataclass
class Faults:
    """What the next /generate calls do instead of answering normally."""

    refuse_next: int = 0  # answer HTTP 400
    die_after_chunks: int | None = None  # drop the connection after this many chunks (once)
    hang_next: int = 0  # accept, then say nothing until the client gives up
    pace_s: float = 0.0  # wait this long before each chunk (keeps requests in flight for a while)


@dataclass
class StandIn:
    engine: Any  # an EmbeddedEngine
    name: str = "worker"
    incremental: bool = False  # SGLang's --incremental-streaming-output
    # SGLang's --enable-strict-thinking. With --grammar-backend llguidance (which cannot filter tokens)
    # SGLang does not enforce max_thinking_tokens (constrained/reasoner_grammar_backend.py): neither does this.
    strict_thinking: bool = False
    deterministic: bool = False  # --enable-deterministic-inference: only then is sampling_seed honoured
    faults: Faults = field(default_factory=Faults)
    requests: list[Any] = field(default_factory=list)  # decoded GenerateRequests, in arrival order
    headers: list[dict[str, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    expanded_prompt_tokens: list[int] = field(default_factory=list)  # each prompt's size, images expanded
    connections: set[tuple[str, int]] = field(default_factory=set)  # the clients' (host, port): one per TCP connection
    _abort_requested: set[str] = field(default_factory=set)  # rids named by /abort_request

    # -- ASGI --------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if method == "GET" and path in ("/health", "/health_generate"):
            return await _json(send, 200, {})
        if method == "GET" and path in ("/model_info", "/get_model_info"):
            info = API.GetModelInfoResponse(model_path=self.name, served_model_name="standin-model",
                                            tokenizer_path=self.name, is_generation=True,
                                            reasoning_parser="qwen3" if self.strict_thinking else None)
            vision = self.engine.model_info.vision
            return await _json(send, 200, {**API.encode_GetModelInfoResponse(info),
                                           "has_image_understanding": vision})
        if method == "GET" and path in ("/server_info", "/get_server_info"):
            # The real server's shape and defaults (http_server.py server_info: its resolved server args
            # and the scheduler's facts): no --context-length, so context_length is null and no
            # max_context_length at all; the input limit is the scheduler's max_req_input_len.
            ctx = self.engine.model_info.context_length
            return await _json(send, 200, {
                "model_path": self.name, "served_model_name": "standin-model", "tokenizer_path": self.name,
                "version": "0.5.23", "context_length": None, "max_req_input_len": ctx - 6,
                "max_total_num_tokens": 1 << 20, "grammar_backend": "llguidance",
                "enable_strict_thinking": self.strict_thinking,
                "enable_deterministic_inference": self.deterministic,
                "incremental_streaming_output": self.incremental})
        if method == "POST" and path == "/abort_request":
            rid = json.loads(body or b"{}").get("rid")
            self.aborted.append(rid)
            for one in rid if isinstance(rid, list) else [rid]:
                self._abort_requested.add(one)
            return await _json(send, 200, {})
        if method in ("POST", "PUT") and path == "/generate":
            return await self._generate(scope, body, send)
        return await _json(send, 404, {"detail": "Not Found"})

    async def _generate(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        try:
            req = API.decode_GenerateRequest(json.loads(body))
        except (ValueError, API.JsonContractError) as exc:  # what SGLang answers for a contract error
            return await _json(send, 400, {"error": str(exc)})
        self.requests.append(req)
        if scope.get("client"):
            self.connections.add(tuple(scope["client"]))
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        try:
            verify_logit_bias(req, self.engine.model_info.vocab_size)
        except ValueError as exc:  # SGLang refuses the request before it streams anything
            return await _json(send, 400, {"error": {"message": str(exc), "code": 400}})
        if self.faults.refuse_next:
            self.faults.refuse_next -= 1
            return await _json(send, 400, {"error": {"message": "The input is too long.", "code": 400}})
        if not req.stream:
            return await _json(send, 400, {"error": "the stand-in streams only (Lodestar always streams)"})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        if self.faults.hang_next:
            self.faults.hang_next -= 1
            await asyncio.sleep(60)  # the client's read timeout ends it first
            return
        die_after, self.faults.die_after_chunks = self.faults.die_after_chunks, None
        sent = 0
        async for chunk in self._chunks(req):
            if self.faults.pace_s:
                await asyncio.sleep(self.faults.pace_s)
            if die_after is not None and sent >= die_after:
                raise ConnectionAbortedError("stand-in: worker died mid-stream")
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                        "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    # -- generation --------------------------------------------------------------------------------------
    async def _chunks(self, req: Any) -> Any:
        batch = isinstance(req.rid, list)
        rids = req.rid if batch else [req.rid]
        prompts = (req.input_ids if req.input_ids is not None else req.text) if batch else \
            [req.input_ids if req.input_ids is not None else req.text]
        params = req.sampling_params if batch else [req.sampling_params]
        images = (req.image_data or [None] * len(rids)) if batch else [req.image_data]
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

        async def run(index: int) -> None:
            try:
                await self._one(index, rids[index], prompts[index], params[index], images[index], req, queue)
            except BaseException as exc:  # noqa: BLE001 - handed to the stream
                await queue.put(exc)
            await queue.put(None)

        tasks = [asyncio.create_task(run(i)) for i in range(len(rids))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def _one(self, index: int, rid: str, prompt: Any, sp: Any, image_data: Any, req: Any,
                   queue: asyncio.Queue) -> None:
        engine_images = []
        if isinstance(prompt, str):
            ids = self.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            reported = len(ids)  # what the issue saw: the text prompt's count, placeholders not expanded
            for url in (image_data if isinstance(image_data, list) else [image_data] if image_data else []):
                engine_images.append(await asyncio.to_thread(self._image, url))
        else:
            ids = list(prompt)
            reported = len(ids)
        # The prompt's size as the model sees it: each placeholder expanded to its image's tokens (the engine
        # below expands them itself, as SGLang's worker does).
        expanded = expand_placeholders(ids, self.engine.model_info.image_token_id, engine_images) \
            if engine_images else ids
        self.expanded_prompt_tokens.append(len(expanded))
        constraint = _constraint(sp)
        if constraint is not None:
            await asyncio.to_thread(self.engine.prepare_constraint, constraint)
        top_logprobs = req.top_logprobs_num if isinstance(req.top_logprobs_num, int) else 0
        engine_req = EngineRequest(
            request_id=rid, prompt_ids=ids, images=engine_images, constraint=constraint,
            logprobs=bool(req.return_logprob), top_logprobs=top_logprobs or 0,
            sampling=SamplingParams(
                max_new_tokens=sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p,
                top_k=0 if sp.top_k in (None, -1, _NO_TOP_K) else sp.top_k, min_p=sp.min_p,
                frequency_penalty=sp.frequency_penalty, presence_penalty=sp.presence_penalty,
                # Without --enable-deterministic-inference SGLang ignores sampling_seed
                # (sampling/sampling_batch_info.py): each call samples afresh.
                seed=sp.sampling_seed if self.deterministic else None, stop_token_ids=self._stop_ids(sp),
                min_new_tokens=sp.min_new_tokens or 0, logit_bias=_logit_bias(sp)))
        out_ids: list[int] = []
        try:
            async for event in self._events(engine_req, rid, reported, index, req, out_ids):
                await queue.put(event)
        except EngineError as exc:  # aborted: SGLang ends the choice with an abort finish
            meta = API.GenerateMetaInfo(id=rid, prompt_tokens=reported, completion_tokens=len(out_ids),
                                        finish_reason=API.FinishAbort(message=str(exc), status_code=exc.status))
            await queue.put(API.encode_GenerateResponse(API.GenerateResponse(meta_info=meta, output_ids=[],
                                                                             index=index)))

    async def _events(self, engine_req: EngineRequest, rid: str, prompt_tokens: int, index: int, req: Any,
                      out_ids: list[int]) -> Any:
        text = ""
        logprobs: list[Any] = []
        tops: list[Any] = []
        top_logprobs = engine_req.top_logprobs
        stop = req_stop(req, index)
        cached = 0
        async for event in self.engine.generate(engine_req):
            if rid in self._abort_requested:  # SGLang ends an aborted choice with an abort finish
                raise EngineError("the request was aborted", status=503, code="aborted")
            cached = event.facts.cached_tokens if event.facts is not None else cached
            sent = len(out_ids)
            out_ids.extend(event.token_ids)
            text += event.text
            for lp in event.logprobs or []:
                logprobs.append(API.LogprobEntry(logprob=sglang_logprob(lp.logprob), token_id=lp.token_id))
                tops.append([API.LogprobEntry(logprob=sglang_logprob(p), token_id=t) for t, p in lp.top])
            finish = None
            if event.finish_reason == "stop":
                finish = API.FinishStop(matched=out_ids[-1])
            elif event.finish_reason == "length":
                finish = API.FinishLength(length=len(out_ids))
            matched = next((s for s in stop if s in text), None)
            if finish is None and matched is not None:  # SGLang's stop strings end the choice at once
                finish = API.FinishStop(matched=matched)
            start = sent if self.incremental else 0
            meta = API.GenerateMetaInfo(
                id=rid, prompt_tokens=prompt_tokens, completion_tokens=len(out_ids), cached_tokens=cached,
                finish_reason=finish,
                output_token_logprobs=logprobs[start:] if req.return_logprob else None,
                output_top_logprobs=tops[start:] if req.return_logprob and top_logprobs else [])
            reply = API.GenerateResponse(text=event.text if self.incremental else text, meta_info=meta,
                                         output_ids=out_ids[start:], index=index)
            yield API.encode_GenerateResponse(reply)
            if finish is not None:
                return  # leaving the engine's stream ends its work

    def _stop_ids(self, sp: Any) -> tuple[int, ...]:
        """SGLang stops at the request's stop_token_ids and, unless ignore_eos, at the model's EOS tokens
        (SamplingParams.normalize adds the tokenizer's and generation config's; schedule_batch.check_finished)."""
        ids = list(sp.stop_token_ids or ())
        eos = self.engine.tokenizer.eos_token_id
        if not sp.ignore_eos and eos is not None and eos not in ids:
            ids.append(eos)
        return tuple(ids)

    def _image(self, url: str) -> Any:
        from PIL import Image

        header, _, payload = url.partition(",")
        assert header.startswith("data:image/"), "Lodestar sends images as data URLs"
        image = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
        return self.engine.prepare_image(image, f"standin:{len(payload)}", image.width * image.height)

    # -- serving -----------------------------------------------------------------------------------------
    def serve_in_thread(self, port: int) -> Any:
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, name=f"standin-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the stand-in worker did not start")
            time.sleep(0.05)
        return server


def sglang_logprob(value: float) -> float:
    """A logprob as SGLang sends it: OutputLogprobProcessor.compute_logprobs clamps the -inf of a token its
    grammar masks to the lowest float32 (the logits are float32), so the wire never holds -inf or null."""
    return max(value, FLOAT32_MIN)


def req_stop(req: Any, index: int) -> list[str]:
    sp = req.sampling_params[index] if isinstance(req.sampling_params, list) else req.sampling_params
    stop = sp.stop if sp is not None else None
    return [stop] if isinstance(stop, str) else list(stop or [])


def verify_logit_bias(req: Any, vocab_size: int) -> None:
    """SGLang's own check of a request (SamplingParams.verify): every logit_bias key an id of the vocabulary."""
    for sp in req.sampling_params if isinstance(req.sampling_params, list) else [req.sampling_params]:
        for key in (sp.logit_bias if sp is not None else None) or {}:
            if not 0 <= int(key) < vocab_size:
                raise ValueError(f"logit_bias must has keys in [0, {vocab_size - 1}], got {key}.")


def _logit_bias(sp: Any) -> dict[int, float]:
    return {int(key): float(value) for key, value in (sp.logit_bias or {}).items()}


def _constraint(sp: Any) -> Constraint | None:
    """The request's grammar as llguidance reads it (SGLang's llguidance grammar backend)."""
    import hashlib

    if sp.ebnf:
        grammar = sp.ebnf
    elif sp.json_schema:
        grammar = "start: %json " + sp.json_schema
    elif sp.regex:
        grammar = "start: /" + sp.regex.replace("/", "\\/") + "/"
    else:
        return None
    return Constraint(grammar=grammar, key=hashlib.sha256(grammar.encode()).hexdigest())


async def _json(send: Any, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def build_engine(model: str, *, prefix_cache_bytes: int = 256 << 20) -> Any:
    """An embedded engine (fp32, so repeated requests are exact) to stand behind the contract."""
    from core.settings import SchedulerSettings
    from engines.embedded.engine import EmbeddedEngine
    from engines.embedded.loader import load_model

    loaded = load_model(model, Path("~/.local/share/lodestar").expanduser(), quantize="none")
    return EmbeddedEngine(loaded, scheduler=SchedulerSettings(max_batch_size=8, prefill_chunk=256, queue_timeout_s=60,
                                                              threads=1, prefix_cache_bytes=prefix_cache_bytes))


def main() -> None:
    """sglang.launch_server's command line, as far as Lodestar's launcher uses it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--grammar-backend")
    parser.add_argument("--incremental-streaming-output", action="store_true")
    args, _ = parser.parse_known_args()
    import uvicorn

    standin = StandIn(build_engine(args.model_path), name=args.model_path,
                      incremental=args.incremental_streaming_output)
    uvicorn.run(standin, host=args.host, port=args.port,
                log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
