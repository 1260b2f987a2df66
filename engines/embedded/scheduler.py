"""The embedded engine's scheduler: one thread that owns the model and every KV cache.

Each loop iteration admits waiting requests, runs at most one prefill chunk (so a long prompt does not
stall everyone's decode for long), then one batched decode step over every running choice. Requests join
and leave the batch between steps (continuous batching). Admission is fair across tenants (API keys): the
tenant with the fewest choices in the batch goes first, and when the batch is full, a tenant holding at least
two slots more than a waiting one has its newest choice paused (its KV cache kept) to make room. Results go
back to the event loop through a callback per request; an exception in one request ends that request only.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.base import EngineError, EngineEvent, EngineRequest, FinishReason, TokenLogprob
from engines.detokenizer import IncrementalDetokenizer
from engines.embedded.decoder import Decoder, KVCache
from engines.embedded.grammar import GrammarCompiler, GrammarState
from engines.embedded.prefix_cache import PrefixCache, image_keys
from engines.embedded.sampler import ChoiceSampler
from engines.embedded.vision import QwenVision
from engines.thinking import ThinkingTracker

log = logging.getLogger("lodestar.scheduler")

Emit = Callable[[EngineEvent | BaseException], None]


@dataclass(slots=True)
class SchedulerConfig:
    max_batch_size: int = 8  # choices decoded together
    prefill_chunk: int = 256  # prompt tokens per prefill step
    queue_timeout_s: float = 60.0
    threads: int = 0  # torch threads for the forward passes; 0: one per core


@dataclass(eq=False, slots=True)
class Group:
    """One engine request: its prompt cache while prefilling, then its n choices."""

    req: EngineRequest
    emit: Emit
    enqueued_at: float
    admitted_at: float = 0.0  # when it left the queue for a batch slot
    cache: KVCache | None = None
    prefilled: int = 0
    cached: int = 0  # prompt tokens taken from the prefix cache
    keys: list[int] = field(default_factory=list)  # the prompt's prefix-cache keys
    aborted: bool = False
    # Vision prompts: M-RoPE positions of the whole prompt, image-token embeddings and how many are used.
    positions: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    image_rows_used: int = 0


@dataclass(eq=False, slots=True)
class Sequence:
    """One choice of a group being decoded: its KV cache, sampler, detokenizer and grammar."""

    group: Group
    index: int
    cache: KVCache
    sampler: ChoiceSampler
    detok: IncrementalDetokenizer
    grammar: GrammarState | None = None
    thinking: ThinkingTracker | None = None
    forced: deque[int] = field(default_factory=deque)  # inserted tokens still to feed (a reasoning close)
    last_forced: bool = False
    last_token: int = 0
    generated: int = 0

    def pick(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """The next token: an inserted one if any is due, else sampled (under the grammar, once the
        reasoning section, if any, is closed)."""
        thinking = self.thinking
        if thinking is not None and thinking.must_close():
            self.forced.extend(thinking.budget.close_ids)
        if self.forced:
            self.last_forced = True
            return self.forced.popleft(), None
        self.last_forced = False
        stops = self.group.req.sampling.stop_token_ids
        if stops and (self.generated < self.group.req.sampling.min_new_tokens or
                      (thinking is not None and thinking.answer_due)):
            logits = logits.clone()  # the row may be shared by a request's choices
            logits[list(stops)] = float("-inf")
        grammar = self.grammar if thinking is None or thinking.answering else None
        if grammar is not None:
            grammar.restrict(logits)
        sampling = self.group.req.sampling
        ending = _end_token(logits, sampling) if self.last_token in sampling.end_after_ids else None
        token, logprob = self.sampler.sample(logits) if ending is None else self.sampler.take(logits, ending)
        if grammar is not None:
            grammar.advance(token)
        if thinking is not None and token in stops and thinking.close_on_stop():
            # The turn would end inside the reasoning: close the reasoning instead, an answer follows.
            self.forced.extend(thinking.budget.close_ids)
            self.last_forced = True
            return self.forced.popleft(), None
        return token, logprob


def _end_token(logits: torch.Tensor, sampling: Any) -> int | None:
    """The likeliest stop token, when the stop tokens together hold at least end_probability (after a
    tool call: see SamplingParams.end_after_ids)."""
    stops = list(sampling.stop_token_ids)
    if not stops or sampling.end_probability <= 0:
        return None
    ending = torch.softmax(logits, dim=-1)[stops]
    if float(ending.sum()) < sampling.end_probability:
        return None
    return stops[int(torch.argmax(ending))]


def _tenant(item: Sequence | Group) -> str | None:
    return (item.group if isinstance(item, Sequence) else item).req.tenant


def use_one_torch_thread() -> None:
    """Make the calling thread, and threads that first use torch after this call, compute single-threaded.

    Only the scheduler thread should run torch ops in parallel. Every thread that does gets its own OpenMP
    pool, and once the pools hold more threads than there are cores, libgomp stops spinning between
    parallel regions: each of the ~1,000 ops of a decode step then waits for a sleeping worker to wake.
    Measured on 2 cores: decode 30% slower, the process at 1.3 busy cores instead of 2. Call this before
    loading the model (loading would otherwise create a pool that lives on in its thread).
    """
    torch.set_num_threads(1)


class Scheduler:
    def __init__(self, decoder: Decoder, tokenizer: Any, context_length: int, config: SchedulerConfig,
                 vision: QwenVision | None = None, grammars: GrammarCompiler | None = None,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.decoder = decoder
        self.prefix_cache = prefix_cache or PrefixCache(0)
        self.vision = vision
        self.grammars = grammars
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.config = config
        self._inbox: queue.SimpleQueue[Group | None] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # run in this thread
        self._waiting: deque[Group] = deque()
        self._prefilling: deque[Group] = deque()
        self._running: list[Sequence] = []
        self._paused: deque[Sequence] = deque()  # taken out of the batch for another tenant; resumed first
        self._thread = threading.Thread(target=self._run, name="lodestar-scheduler", daemon=True)
        self._threads_set = threading.Event()
        self._stopping = False
        self.steps = 0

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
        return len(self._waiting) + self._inbox.qsize()

    @property
    def batch_size(self) -> int:
        return len(self._running)

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
        idle = not (self._waiting or self._prefilling or self._running or self._paused)
        self._take_inbox(block=idle)
        while not self._calls.empty():
            self._calls.get_nowait()()
        self._drop_aborted()
        self._expire_waiting()
        self._admit()
        if self._prefilling:
            self._prefill_step(self._prefilling[0])
        if self._running:
            self._decode_step()

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drop_aborted(self) -> None:
        if any(g.aborted for g in self._waiting):
            self._waiting = deque(g for g in self._waiting if not g.aborted)
        if any(g.aborted for g in self._prefilling):
            self._prefilling = deque(g for g in self._prefilling if not g.aborted)
        if any(c.group.aborted for c in self._running):
            self._running = [c for c in self._running if not c.group.aborted]
        if any(c.group.aborted for c in self._paused):
            self._paused = deque(c for c in self._paused if not c.group.aborted)

    def _expire_waiting(self) -> None:
        deadline = time.monotonic() - self.config.queue_timeout_s
        while self._waiting and self._waiting[0].enqueued_at < deadline:
            group = self._waiting.popleft()
            group.emit(EngineError(
                f"the request waited longer than the queue timeout ({self.config.queue_timeout_s:g} s)",
                status=503, code="queue_timeout", retry_after=1.0))

    def _admit(self) -> None:
        """Fill the batch: the tenant with the fewest choices in it first, oldest first within a tenant."""
        active: Counter[str | None] = Counter(c.group.req.tenant for c in self._running)
        for group in self._prefilling:
            active[group.req.tenant] += group.req.n
        while self._paused or self._waiting:
            candidates: list[Sequence | Group] = [*self._paused, *self._waiting]
            item = min(candidates,
                       key=lambda i: (active[_tenant(i)], (i.group if isinstance(i, Sequence) else i).enqueued_at))
            tenant, need = _tenant(item), 1 if isinstance(item, Sequence) else item.req.n
            if sum(active.values()) + need > self.config.max_batch_size and not self._make_room(active, tenant, need):
                return
            active[tenant] += need
            if isinstance(item, Sequence):
                self._paused.remove(item)
                self._running.append(item)
                continue
            self._waiting.remove(item)
            item.admitted_at = time.monotonic()
            item.cache = self.decoder.new_cache(len(item.req.prompt_ids) + 64)
            self._reuse_prefix(item)
            self._prefilling.append(item)

    def _make_room(self, active: Counter[str | None], tenant: str | None, need: int) -> bool:
        """Pause the newest choices of tenants holding at least two slots more than `tenant` until `need`
        slots are free (all or nothing); at most max_batch_size choices stay paused (their KV caches are kept)."""
        counts, running, paused = Counter(active), list(self._running), list[Sequence]()
        while sum(counts.values()) + need > self.config.max_batch_size:
            victims = [c for c in running if counts[c.group.req.tenant] >= counts[tenant] + 2]
            if not victims or len(self._paused) + len(paused) >= self.config.max_batch_size:
                return False
            victim = max(victims, key=lambda c: (counts[c.group.req.tenant], c.group.admitted_at))
            running.remove(victim)
            paused.append(victim)
            counts[victim.group.req.tenant] -= 1
        self._running = running
        self._paused.extend(paused)
        active.clear()
        active.update(counts)
        return True

    def _reuse_prefix(self, group: Group) -> None:
        """Start the group's cache with the longest cached prefix of its prompt (never the whole prompt: the
        last prompt token is computed to get the first logits)."""
        if not self.prefix_cache.enabled:
            return
        req = group.req
        assert group.cache is not None
        image_token = self.vision.image_token_id if self.vision is not None else None
        group.keys = image_keys(req.prompt_ids, image_token, [(i.digest, i.num_tokens) for i in req.images])
        group.cached = group.prefilled = self.prefix_cache.lookup(group.keys, group.cache,
                                                                 limit=len(req.prompt_ids) - 1)
        if group.cached and image_token is not None:
            group.image_rows_used = sum(1 for t in req.prompt_ids[: group.cached] if t == image_token)

    def _prefill_step(self, group: Group) -> None:
        prompt = group.req.prompt_ids
        end = min(len(prompt), group.prefilled + self.config.prefill_chunk)
        try:
            assert group.cache is not None
            chunk = prompt[group.prefilled : end]
            extra = self._vision_inputs(group, chunk, end) if group.req.images else {}
            logits = self.decoder.prefill(group.cache, chunk, **extra)
            group.prefilled = end
            if end < len(prompt):
                return
            self._prefilling.popleft()
            group.positions = group.image_embeds = None
            if group.keys:
                self.prefix_cache.insert(group.keys, group.cache, group.req.session_key)
            self._start_choices(group, logits.float())
        except Exception as exc:
            if isinstance(exc, EngineError):  # the request's own failure (its grammar gave up)
                log.warning("request %s failed: %s", group.req.request_id, exc)
            else:
                log.exception("prefill failed for %s", group.req.request_id)
            if self._prefilling and self._prefilling[0] is group:
                self._prefilling.popleft()
            group.aborted = True  # choices already started leave the batch
            group.emit(exc if isinstance(exc, EngineError) else EngineError(f"prefill failed: {exc}"))

    def _vision_inputs(self, group: Group, chunk: list[int], end: int) -> dict[str, Any]:
        """M-RoPE positions and image embeddings for one prefill chunk of a prompt with images."""
        if self.vision is None:
            raise ValueError("this model does not accept images")
        assert group.cache is not None
        if group.positions is None:  # first chunk: encode every image of the prompt once
            group.positions, group.cache.position_offset = self.vision.positions(group.req.prompt_ids,
                                                                                 group.req.images)
            group.image_embeds = self.vision.encode(group.req.images)
        start = end - len(chunk)
        extra: dict[str, Any] = {"positions": group.positions[:, start:end]}
        mask = torch.tensor(chunk) == self.vision.image_token_id
        count = int(mask.sum())
        if count:
            assert group.image_embeds is not None
            rows = group.image_embeds[group.image_rows_used : group.image_rows_used + count]
            if rows.shape[0] != count:
                raise ValueError("the prompt has more image tokens than its images have embeddings")
            group.image_rows_used += count
            extra["embeds"] = (mask, rows)
        return extra

    def _start_choices(self, group: Group, logits: torch.Tensor) -> None:
        req = group.req
        seed = req.sampling.seed
        assert group.cache is not None
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
            token, logprob = choice.pick(logits if choice.grammar is None else logits.clone())
            if self._advance(choice, token, logprob):
                self._running.append(choice)
        group.cache = None

    def _decode_step(self) -> None:
        batch = self._running
        try:
            logits = self.decoder.decode([c.cache for c in batch], [c.last_token for c in batch]).float()
        except Exception as exc:
            log.exception("decode step failed")
            self._running = []
            for group in {c.group for c in batch}:
                group.emit(EngineError(f"decode failed: {exc}"))
            return
        self.steps += 1
        still = []
        for row, choice in enumerate(batch):
            try:
                token, logprob = choice.pick(logits[row])
                if self._advance(choice, token, logprob):
                    still.append(choice)
            except EngineError as exc:  # the request's own failure (its grammar gave up), not the engine's
                log.warning("request %s failed: %s", choice.group.req.request_id, exc)
                choice.group.aborted = True
                choice.group.emit(exc)
            except Exception as exc:
                log.exception("sampling failed for %s", choice.group.req.request_id)
                choice.group.aborted = True
                choice.group.emit(EngineError(f"sampling failed: {exc}"))
        self._running = [c for c in still if not c.group.aborted]

    def _advance(self, choice: Sequence, token: int, logprob: TokenLogprob | None) -> bool:
        """Record a sampled token and emit it; return whether the choice keeps decoding."""
        group = choice.group
        req = group.req
        choice.generated += 1
        choice.last_token = token
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
        choice.group.emit(EngineEvent(
            index=choice.index, token_ids=[token], text=text,
            logprobs=[logprob] if logprob is not None else None, finish_reason=finish,
            prompt_tokens=len(req.prompt_ids), cached_tokens=choice.group.cached, forced=choice.last_forced,
            queued_s=group.admitted_at - group.enqueued_at if choice.generated == 1 and choice.index == 0 else None))
        return finish is None
