"""The embedded engine's prefix cache: a radix tree over token keys whose edges hold the KV of their tokens.

Every request matches its prompt against the tree (`match` -> a `Match` handle), copies the longest cached
prefix into its own KV cache (`load`: a sequence's KV is one contiguous tensor, so a hit is one copy) and
prefills only the rest. The matched path stays locked (`lock`/`unlock`) while the request prefills, so
that other requests' inserts cannot evict it before the prompt is added in turn. Prompts are added once
prefilled, and each choice's reply when it ends, so the next turn of a conversation (prompt + reply + new
message) finds everything but the new message. Shared by all requests; bounded in bytes: `evict(size)`
frees unlocked leaves, least recently used first (a session's last), through one heap per call. Lives in
the scheduler thread.

Keys are token ids, except that image tokens are keyed by their image's digest and row: two prompts share
a cached prefix only if they have the same images there.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engines.embedded.decoder import KVCache

_clock = itertools.count()


@dataclass(eq=False, slots=True)
class _Node:
    keys: tuple[int, ...]  # the edge from the parent: these tokens
    k: torch.Tensor | None  # [layers, kv_heads, len(keys), head_dim]; None for the root
    v: torch.Tensor | None
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)  # by first key
    used: int = 0  # logical clock of the last use
    session: str | None = None  # the session whose conversation last stored this edge: evicted last
    locks: int = 0  # matches holding this node or a node below it: not evictable while > 0

    def nbytes(self) -> int:
        return 0 if self.k is None or self.v is None else self.k.nbytes + self.v.nbytes


@dataclass(eq=False, slots=True)
class Match:
    """A cached prefix of a prompt: `length` tokens along `parts` (each node and how many of its keys)."""

    length: int
    parts: list[tuple[_Node, int]]
    locked: bool = False

    @property
    def node(self) -> _Node | None:
        """The deepest node the prefix reaches into (None: nothing matched)."""
        return self.parts[-1][0] if self.parts else None


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.root = _Node((), None, None, None)
        self.bytes = 0
        self.hits = 0  # lookups that reused at least one token
        self.lookups = 0
        self.reused_tokens = 0
        self.evicted_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def match(self, keys: Sequence[int], limit: int) -> Match:
        """The longest cached prefix of `keys`, at most `limit` tokens; the nodes it reads count as used.
        Load it (if at all) before the next insert, which may split its nodes."""
        if not self.enabled:
            return Match(0, [])
        self.lookups += 1
        limit = min(limit, len(keys))
        parts: list[tuple[_Node, int]] = []
        node, at, now = self.root, 0, next(_clock)
        while at < limit:
            child = node.children.get(keys[at])
            if child is None:
                break
            common = _common(child.keys, keys, at, limit)
            parts.append((child, common))
            child.used = now
            at += common
            if common < len(child.keys):
                break
            node = child
        if at:
            self.hits += 1
            self.reused_tokens += at
        return Match(at, parts)

    def load(self, match: Match, cache: KVCache) -> int:
        """Copy the match's KV into the empty `cache`; return its length."""
        if not match.length:
            return 0
        cache.reserve(match.length)
        start = 0
        for node, count in match.parts:
            assert node.k is not None and node.v is not None
            cache.k[:, :, start : start + count] = node.k[:, :, :count]
            cache.v[:, :, start : start + count] = node.v[:, :, :count]
            start += count
        cache.length = match.length
        return match.length

    def lock(self, match: Match) -> None:
        """Keep the matched path (the node and its ancestors) from eviction until unlock()."""
        if match.node is not None and not match.locked:
            match.locked = True
            self._add_lock(match.node, 1)

    def unlock(self, match: Match) -> None:
        if match.node is not None and match.locked:
            match.locked = False
            self._add_lock(match.node, -1)

    def _add_lock(self, node: _Node | None, delta: int) -> None:
        while node is not None and node is not self.root:
            node.locks += delta
            node = node.parent

    def insert(self, keys: Sequence[int], cache: KVCache, session: str | None = None) -> None:
        """Remember the KV of `keys[:cache.length]` (only the part not cached yet is copied). A session's
        prefixes are kept in preference: other leaves are evicted first."""
        length = min(len(keys), cache.length)
        if not self.enabled or not length:
            return
        node, at, now = self.root, 0, next(_clock)
        while at < length:
            child = node.children.get(keys[at])
            if child is None:
                leaf = _Node(tuple(keys[at:length]), cache.k[:, :, at:length].clone(),
                             cache.v[:, :, at:length].clone(), node, used=now, session=session)
                node.children[keys[at]] = leaf
                self.bytes += leaf.nbytes()
                break
            common = _common(child.keys, keys, at, length)
            if common < len(child.keys):  # split first: the lower part is not used by this insert
                child = self._split(child, common)
            child.used = now
            child.session = session or child.session
            node, at = child, at + common
        if self.bytes > self.budget:
            self.evict(self.bytes - self.budget)

    def forget_session(self, session: str) -> None:
        """The session is gone: its prefixes compete like any others."""
        for node in self._nodes():
            if node.session == session:
                node.session = None

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut `node`'s edge after `at` keys; return the new upper part (copies, so evicting either half
        frees its memory). The upper part holds every lock of the lower one: it is on the same paths."""
        assert node.parent is not None and node.k is not None and node.v is not None
        upper = _Node(node.keys[:at], node.k[:, :, :at].clone(), node.v[:, :, :at].clone(), node.parent,
                      used=node.used, session=node.session, locks=node.locks)
        node.parent.children[node.keys[0]] = upper
        node.keys, node.k, node.v = node.keys[at:], node.k[:, :, at:].clone(), node.v[:, :, at:].clone()
        node.parent = upper
        upper.children[node.keys[0]] = node
        return upper

    def evict(self, size: int) -> int:
        """Free at least `size` bytes if the unlocked leaves hold them: least recently used first, a
        session's leaves last, a parent once its last child is gone. Returns the bytes freed."""
        order = itertools.count()  # ties (and nodes, which do not compare) broken by discovery order

        def entry(n: _Node) -> tuple[bool, int, int, _Node]:
            return (n.session is not None, n.used, next(order), n)

        heap = [entry(n) for n in self._nodes() if self._evictable(n)]
        heapq.heapify(heap)
        freed = 0
        while freed < size and heap:
            victim = heapq.heappop(heap)[3]
            parent = victim.parent
            assert parent is not None
            del parent.children[victim.keys[0]]
            freed += victim.nbytes()
            self.bytes -= victim.nbytes()
            self.evicted_tokens += len(victim.keys)
            if self._evictable(parent):
                heapq.heappush(heap, entry(parent))
        return freed

    def _evictable(self, node: _Node) -> bool:
        return node is not self.root and not node.children and not node.locks

    def _nodes(self) -> list[_Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def stats(self) -> dict[str, int]:
        return {"prefix_cache_bytes": self.bytes, "prefix_cache_lookups": self.lookups,
                "prefix_cache_hits": self.hits, "prefix_cache_reused_tokens": self.reused_tokens,
                "prefix_cache_evicted_tokens": self.evicted_tokens}


def _common(edge: tuple[int, ...], keys: Sequence[int], at: int, limit: int) -> int:
    """How many keys of `edge` match keys[at:limit]."""
    count = min(len(edge), limit - at)
    for i in range(count):
        if edge[i] != keys[at + i]:
            return i
    return count


def image_keys(prompt: Sequence[int], image_token_id: int | None, digests: Sequence[tuple[str, int]]) -> list[int]:
    """The cache keys of a prompt: token ids, with each image token replaced by a key for (image, row).

    `digests` lists each image's digest and token count, in prompt order. Image keys are negative, so they
    never equal a token id.
    """
    if image_token_id is None or not digests:
        return list(prompt)
    rows = iter([(digest, row) for digest, count in digests for row in range(count)])
    keys = []
    for token in prompt:
        if token == image_token_id:
            digest, row = next(rows, ("", 0))
            keys.append(-1 - (hash((digest, row)) & 0x7FFF_FFFF_FFFF_FFFF))
        else:
            keys.append(token)
    return keys
