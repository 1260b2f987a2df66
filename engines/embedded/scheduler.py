"""The embedded engine's scheduler: one thread that owns the model and every KV cache, and runs the steps
that its BatchPolicy (policy.py) decides.

Each loop iteration takes new requests, lets the policy expire, drop and admit, gives each admitted group a
KV cache (with its cached prefix), then runs the step: at most one prefill chunk and one batched decode step
over every running choice. Requests join and leave the batch between steps (continuous batching). Results
go back to the event loop through a callback per request; an exception in one request ends that request only.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from core.settings import SchedulerSettings
from engines.base import EngineError, EngineEvent, FinishReason, RequestFacts, TokenLogprob
from engines.detokenizer import IncrementalDetokenizer
from engines.embedded.decoder import Decoder
from engines.embedded.grammar import GrammarCompiler
from engines.embedded.kernels import use_one_torch_thread
from engines.embedded.lookup import PromptLookup
from engines.embedded.policy import BatchPolicy, Prefill
from engines.embedded.prefix_cache import PrefixCache, image_keys
from engines.embedded.sampler import ChoiceSampler
from engines.embedded.sequence import Group, Sequence
from engines.embedded.vision import QwenVision
from engines.thinking import ThinkingTracker

log = logging.getLogger("lodestar.scheduler")


class Scheduler:
    def __init__(self, decoder: Decoder, tokenizer: Any, context_length: int, config: SchedulerSettings,
                 vision: QwenVision | None = None, grammars: GrammarCompiler | None = None,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.decoder = decoder
        self.prefix_cache = prefix_cache or PrefixCache(0)
        self.vision = vision
        self.grammars = grammars
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.config = config
        self.policy = BatchPolicy(config.max_batch_size, config.prefill_chunk, config.queue_timeout_s)
        self._inbox: queue.SimpleQueue[Group | None] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # run in this thread
        self._thread = threading.Thread(target=self._run, name="lodestar-scheduler", daemon=True)
        self._threads_set = threading.Event()
        self._stopping = False
        self.decode_steps = 0
        self.drafted_tokens = self.kept_tokens = 0  # prompt lookup's drafted tokens, and those kept

    # -- called from the event loop -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._threads_set.wait()
        # Threads that start using torch from now on stay single-threaded (see use_one_torch_thread).
        use_one_torch_thread()

    def submit(self, group: Group) -> None:
        self._inbox.put(group)

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the scheduler thread between steps (the thread owns the caches)."""
        self._calls.put(fn)

    def waiting_count(self) -> int:
        return len(self.policy.waiting) + self._inbox.qsize()

    @property
    def batch_size(self) -> int:
        return len(self.policy.running)

    # -- the scheduler thread -------------------------------------------------------------------
    def _run(self) -> None:
        # torch sets up a thread's count once, lazily, from the process-wide one; have that happen now, so
        # that resetting the process-wide count to 1 in start() cannot reach this thread later.
        torch.get_num_threads()
        torch.set_num_threads(self.config.threads or len(os.sched_getaffinity(0)))
        self._threads_set.set()
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._iterate()
                except Exception:  # never let the loop die; the failing request was already told
                    log.exception("scheduler iteration failed")

    def _iterate(self) -> None:
        policy = self.policy
        self._take_inbox(block=policy.idle)
        while not self._calls.empty():
            self._calls.get_nowait()()
        for group in policy.drop_aborted():
            self._release_prefix(group)
        now = time.monotonic()
        for group in policy.expired(now):
            group.emit(EngineError(
                f"the request waited longer than the queue timeout ({self.config.queue_timeout_s:g} s)",
                status=503, code="queue_timeout", retry_after=1.0))
        for group in policy.admit(now):
            group.cache = self.decoder.new_cache(len(group.req.prompt_ids) + 64)
            self._reuse_prefix(group)
        step = policy.schedule()
        started = self._prefill(step.prefill) if step.prefill is not None else []
        if step.decode or started:  # choices whose prompt is done decode their second token at once
            self._decode([*step.decode, *started])

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self.policy.add(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _reuse_prefix(self, group: Group) -> None:
        """Start the group's cache with the longest cached prefix of its prompt (never the whole prompt: the
        last prompt token is computed to get the first logits), locked until the prompt is in the cache."""
        if not self.prefix_cache.enabled:
            return
        req = group.req
        assert group.cache is not None
        image_token = self.vision.image_token_id if self.vision is not None else None
        group.keys = image_keys(req.prompt_ids, image_token, [(i.digest, i.num_tokens) for i in req.images])
        group.prefix = self.prefix_cache.match(group.keys, limit=len(req.prompt_ids) - 1)
        group.cached = group.prefilled = self.prefix_cache.load(group.prefix, group.cache)
        self.prefix_cache.lock(group.prefix)
        if group.cached and image_token is not None:
            group.image_rows_used = sum(1 for t in req.prompt_ids[: group.cached] if t == image_token)

    def _release_prefix(self, group: Group) -> None:
        if group.prefix is not None:
            self.prefix_cache.unlock(group.prefix)
            group.prefix = None

    def _prefill(self, work: Prefill) -> list[Sequence]:
        """Run one prefill chunk; after the last, return the group's choices that start decoding."""
        group = work.group
        try:
            assert group.cache is not None
            chunk = group.req.prompt_ids[work.start : work.end]
            extra = {}
            if group.req.images:
                if self.vision is None:
                    raise ValueError("this model does not accept images")
                extra = self.vision.chunk_inputs(group, chunk, work.end)
            logits = self.decoder.prefill(group.cache, chunk, **extra)
            if not work.last:
                self.policy.prefilled(group, work.end)
                return []
            group.positions = group.image_embeds = None
            if group.keys:
                self.prefix_cache.insert(group.keys, group.cache, group.req.session_key)
            self._release_prefix(group)
            started = self._start_choices(group, logits.float())
            self.policy.prefilled(group, work.end, started)
            return started
        except Exception as exc:
            if isinstance(exc, EngineError):  # the request's own failure (its grammar gave up)
                log.warning("request %s failed: %s", group.req.request_id, exc)
            else:
                log.exception("prefill failed for %s", group.req.request_id)
            self._release_prefix(group)
            self.policy.failed(group)
            group.emit(exc if isinstance(exc, EngineError) else EngineError(f"prefill failed: {exc}"))
            return []

    def _start_choices(self, group: Group, logits: torch.Tensor) -> list[Sequence]:
        """The group's n choices, each with its first token; those that go on decoding."""
        req = group.req
        seed = req.sampling.seed
        assert group.cache is not None
        started = []
        for index in range(req.n):
            cache = group.cache if index == req.n - 1 else group.cache.fork()
            sampler = ChoiceSampler(req.sampling, None if seed is None else seed + index,
                                    self.decoder.vocab_size, req.logprobs, req.top_logprobs)
            choice = Sequence(group, index, cache, sampler, IncrementalDetokenizer(self.tokenizer))
            if req.constraint is not None:
                if self.grammars is None:
                    raise ValueError("this engine has no grammar support")
                choice.grammar = self.grammars.state(req.constraint)
            if req.thinking is not None:
                choice.thinking = ThinkingTracker(req.thinking)
            if self.config.lookup_tokens:
                choice.lookup = PromptLookup(req.prompt_ids, self.config.lookup_tokens)
            token, logprob = choice.pick(logits if choice.grammar is None else logits.clone())
            if self._advance(choice, token, logprob):
                started.append(choice)
        group.cache = None
        return started

    def _decode(self, batch: list[Sequence]) -> None:
        """One decode step over the batch; a choice with drafted tokens has them checked in the same pass."""
        drafts = [self._draft(choice) for choice in batch]
        try:
            rows = [[c.last_token, *draft] for c, draft in zip(batch, drafts, strict=True)]
            logits = self.decoder.extend([c.cache for c in batch], rows).float()
        except Exception as exc:
            log.exception("decode step failed")
            self.policy.decoded([])
            for group in {c.group for c in batch}:
                group.emit(EngineError(f"decode failed: {exc}"))
            return
        self.decode_steps += 1
        still, row = [], 0
        for choice, draft in zip(batch, drafts, strict=True):
            try:
                if self._verify(choice, draft, logits[row : row + len(draft) + 1]):
                    still.append(choice)
            except EngineError as exc:  # the request's own failure (its grammar gave up), not the engine's
                log.warning("request %s failed: %s", choice.group.req.request_id, exc)
                choice.group.aborted = True
                choice.group.emit(exc)
            except Exception as exc:
                log.exception("sampling failed for %s", choice.group.req.request_id)
                choice.group.aborted = True
                choice.group.emit(EngineError(f"sampling failed: {exc}"))
            row += len(draft) + 1
        self.policy.decoded(still)

    def _draft(self, choice: Sequence) -> list[int]:
        """Tokens prompt lookup proposes after the choice's last one, no more than it may still generate."""
        if choice.lookup is None or choice.forced:
            return []
        room = min(choice.group.req.sampling.max_new_tokens - choice.generated - 1,
                   self.context_length - choice.cache.length - 2)
        try:
            return choice.lookup.draft(room)
        except Exception:  # a draft is only an offer: without one, the choice decodes a token as usual
            log.exception("prompt lookup failed for %s; decoding without drafts", choice.group.req.request_id)
            choice.lookup = None
            return []

    def _verify(self, choice: Sequence, draft: list[int], rows: torch.Tensor) -> bool:
        """Pick from each row in turn (after the last token, then after each drafted one) while the picks equal
        the drafted tokens, each pick made as without a draft; the cache keeps the drafted tokens up to the
        last one picked. Return whether the choice keeps decoding."""
        start = choice.cache.length - len(draft)  # the cache as if only the last token had been appended
        kept, going = 0, True
        for i in range(len(draft) + 1):
            choice.cache.length = start + i
            token, logprob = choice.pick(rows[i])
            going = self._advance(choice, token, logprob)
            if i == len(draft) or token != draft[i]:
                break
            kept += 1
            if not going:
                break
        if draft and choice.lookup is not None:
            choice.lookup.verified(len(draft), kept)
            self.drafted_tokens += len(draft)
            self.kept_tokens += kept
        return going

    def _advance(self, choice: Sequence, token: int, logprob: TokenLogprob | None) -> bool:
        """Record a sampled token and emit it; return whether the choice keeps decoding."""
        group = choice.group
        req = group.req
        choice.generated += 1
        choice.last_token = token
        if choice.lookup is not None:
            choice.lookup.append(token)
        finish: FinishReason | None = None
        if token in req.sampling.stop_token_ids and not choice.last_forced:
            finish, text = "stop", choice.detok.flush()
        else:
            text = choice.detok.push(token)
            if choice.generated >= req.sampling.max_new_tokens or \
                    choice.cache.length + 1 >= self.context_length:
                finish = "length"
                text += choice.detok.flush()
        if choice.thinking is not None:
            choice.thinking.feed(text)
        if finish is not None and choice.group.keys:  # the reply too: the next turn starts with it
            self.prefix_cache.insert(choice.group.keys + choice.detok.ids, choice.cache, req.session_key)
        facts = None
        if choice.generated == 1 or finish is not None:
            facts = RequestFacts(len(req.prompt_ids), group.cached, group.admitted_at - group.enqueued_at)
        choice.group.emit(EngineEvent(
            index=choice.index, token_ids=[token], text=text,
            logprobs=[logprob] if logprob is not None else None, finish_reason=finish, facts=facts,
            forced=choice.last_forced))
        return finish is None
