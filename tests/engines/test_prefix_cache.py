"""PrefixCache and image_keys on hand-made KV caches: no model, no fixtures from conftest.

Every position's KV is derived from the whole prefix of keys ending there, so a copy taken from the wrong
branch, the wrong offset, the wrong layer or the wrong sequence shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from engines.embedded.decoder import KVCache
from engines.embedded.prefix_cache import PrefixCache, _Node, image_keys

LAYERS, KV_HEADS, HEAD_DIM = 2, 1, 4
TOKEN_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # k and v, float32
HUGE = 1 << 40

# A distinct small integer per distinct prefix: exact in float32, and equal only for equal prefixes.
_prefix_ids: dict[tuple[int, ...], int] = {}
# Distinguishes layers, heads and dims within one position (so a transposed copy is caught too).
_OFFSETS = torch.arange(LAYERS * KV_HEADS * HEAD_DIM, dtype=torch.float32).reshape(LAYERS, KV_HEADS, HEAD_DIM)


def prefix_id(prefix: Sequence[int]) -> int:
    return _prefix_ids.setdefault(tuple(prefix), len(_prefix_ids) + 1)


def expected_kv(keys: Sequence[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The KV of positions 0..n-1 of a sequence with these keys: [layers, kv_heads, n, head_dim]."""
    k = torch.empty(LAYERS, KV_HEADS, n, HEAD_DIM)
    for p in range(n):
        k[:, :, p] = prefix_id(keys[: p + 1]) * 1000 + _OFFSETS
    return k, -k - 0.5


def empty_cache(capacity: int = 1) -> KVCache:
    return KVCache(layers=LAYERS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, capacity=capacity, dtype=torch.float32)


def filled(keys: Sequence[int], length: int | None = None) -> KVCache:
    """A cache holding the KV of `keys` (its `length` set to `length`, default all of them)."""
    cache = empty_cache(max(1, len(keys)))
    k, v = expected_kv(keys, len(keys))
    cache.k[:, :, : len(keys)] = k
    cache.v[:, :, : len(keys)] = v
    cache.length = len(keys) if length is None else length
    return cache


def lookup(pc: PrefixCache, keys: Sequence[int], limit: int | None = None) -> int:
    """Look `keys` up into a fresh cache, check the copied KV and the cache length; return the count."""
    out = empty_cache()
    match = pc.match(keys, limit=len(keys) if limit is None else limit)
    got = pc.load(match, out)
    assert out.length == got == match.length
    if got:
        k, v = expected_kv(keys, got)
        assert torch.equal(out.k[:, :, :got], k)
        assert torch.equal(out.v[:, :, :got], v)
    return got


def insert(pc: PrefixCache, keys: Sequence[int]) -> None:
    pc.insert(keys, filled(keys))


def cached_tokens(pc: PrefixCache) -> int:
    """How many tokens the tree holds (the sum of its edges)."""
    count, stack = 0, [pc.root]
    while stack:
        node = stack.pop()
        count += len(node.keys)
        stack.extend(node.children.values())
    return count


# ---------------------------------------------------------------------------------------------- lookup / insert


def test_lookup_on_an_empty_cache_returns_zero_and_leaves_it_empty() -> None:
    pc = PrefixCache(HUGE)
    out = empty_cache(4)
    assert pc.load(pc.match([1, 2, 3], limit=3), out) == 0
    assert out.length == 0
    assert pc.bytes == 0 and cached_tokens(pc) == 0 and not pc.root.children
    assert pc.lookups == 1 and pc.hits == 0 and pc.reused_tokens == 0


def test_insert_then_lookup_copies_exactly_the_kv() -> None:
    pc = PrefixCache(HUGE)
    keys = [5, 6, 7, 8]
    insert(pc, keys)
    assert pc.bytes == len(keys) * TOKEN_BYTES
    assert cached_tokens(pc) == len(keys)
    assert lookup(pc, keys) == 4
    assert lookup(pc, keys, limit=3) == 3  # the limit is respected
    assert lookup(pc, keys, limit=1) == 1
    assert lookup(pc, keys, limit=0) == 0
    assert lookup(pc, keys, limit=10) == 4  # min(len, limit)
    assert lookup(pc, [*keys, 9, 10]) == 4  # a longer prompt finds the cached part
    assert lookup(pc, [5, 6, 99]) == 2
    assert lookup(pc, [6, 5]) == 0


def test_lookup_grows_a_small_destination_cache() -> None:
    pc = PrefixCache(HUGE)
    keys = list(range(10, 30))
    insert(pc, keys)
    out = empty_cache(capacity=2)
    assert pc.load(pc.match(keys, limit=len(keys) - 1), out) == len(keys) - 1
    assert out.capacity >= len(keys) - 1 and out.length == len(keys) - 1
    k, v = expected_kv(keys, len(keys) - 1)
    assert torch.equal(out.k[:, :, : out.length], k) and torch.equal(out.v[:, :, : out.length], v)


def test_the_cache_keeps_copies() -> None:
    """Neither the source of an insert nor the destination of a lookup shares memory with the tree."""
    pc = PrefixCache(HUGE)
    keys = [1, 2, 3]
    source = filled(keys)
    pc.insert(keys, source)
    source.k.fill_(float("nan"))
    source.v.fill_(float("nan"))
    out = empty_cache()
    pc.load(pc.match(keys, limit=3), out)
    out.k.fill_(float("nan"))
    out.v.fill_(float("nan"))
    assert lookup(pc, keys) == 3


def test_a_prompt_diverging_inside_an_edge_splits_it() -> None:
    pc = PrefixCache(HUGE)
    a = [1, 2, 3, 4, 5]
    b = [1, 2, 3, 9, 9, 9]
    insert(pc, a)
    insert(pc, b)
    assert pc.bytes == (5 + 3) * TOKEN_BYTES
    assert cached_tokens(pc) == 8
    (upper,) = pc.root.children.values()
    assert upper.keys == (1, 2, 3)
    assert sorted(child.keys for child in upper.children.values()) == [(4, 5), (9, 9, 9)]
    assert lookup(pc, a) == 5
    assert lookup(pc, b) == 6
    assert lookup(pc, [1, 2, 3, 7]) == 3
    assert lookup(pc, [1, 2, 3, 9, 9, 1]) == 5
    assert lookup(pc, [1, 2, 8]) == 2  # diverging inside the upper edge: a lookup does not split
    assert cached_tokens(pc) == 8
    # A third branch off the middle of the upper edge.
    c = [1, 7, 7]
    insert(pc, c)
    assert pc.bytes == (5 + 3 + 2) * TOKEN_BYTES
    assert lookup(pc, a) == 5 and lookup(pc, b) == 6 and lookup(pc, c) == 3


def test_extending_a_cached_sequence_adds_only_the_new_tokens() -> None:
    pc = PrefixCache(HUGE)
    insert(pc, [1, 2, 3])
    before = pc.bytes
    insert(pc, [1, 2, 3, 4, 5, 6])
    assert pc.bytes == before + 3 * TOKEN_BYTES
    assert cached_tokens(pc) == 6
    assert lookup(pc, [1, 2, 3, 4, 5, 6]) == 6
    assert lookup(pc, [1, 2, 3]) == 3


def test_inserting_twice_or_a_cached_prefix_is_idempotent_in_bytes() -> None:
    pc = PrefixCache(HUGE)
    keys = [4, 3, 2, 1]
    insert(pc, keys)
    before = pc.bytes
    insert(pc, keys)
    assert pc.bytes == before and cached_tokens(pc) == 4
    insert(pc, keys[:2])  # a prefix of a cached edge: splits it, stores nothing new
    assert pc.bytes == before and cached_tokens(pc) == 4
    assert lookup(pc, keys) == 4 and lookup(pc, keys[:2]) == 2


def test_insert_uses_only_the_keys_up_to_the_cache_length() -> None:
    pc = PrefixCache(HUGE)
    keys = [1, 2, 3, 4, 5, 6]
    pc.insert(keys, filled(keys, length=3))
    assert pc.bytes == 3 * TOKEN_BYTES
    assert lookup(pc, keys) == 3
    # Fewer keys than the cache holds: only the keys count.
    pc.insert([7, 8], filled([7, 8, 9, 10]))
    assert pc.bytes == 5 * TOKEN_BYTES
    assert lookup(pc, [7, 8, 9, 10]) == 2
    # An empty cache adds nothing.
    pc.insert([11, 12], filled([11, 12], length=0))
    assert pc.bytes == 5 * TOKEN_BYTES and lookup(pc, [11, 12]) == 0


# ---------------------------------------------------------------------------------------------- eviction


def test_the_least_recently_used_leaf_is_evicted_first() -> None:
    pc = PrefixCache(4 * TOKEN_BYTES)
    insert(pc, [1, 2])
    insert(pc, [3, 4])
    assert pc.bytes == 4 * TOKEN_BYTES and pc.evicted_tokens == 0
    assert lookup(pc, [1, 2]) == 2  # [1, 2] is now more recent than [3, 4]
    insert(pc, [5, 6])
    assert pc.bytes == 4 * TOKEN_BYTES
    assert pc.evicted_tokens == 2
    assert lookup(pc, [3, 4]) == 0
    assert lookup(pc, [1, 2]) == 2
    assert lookup(pc, [5, 6]) == 2


def test_without_a_lookup_the_oldest_insert_is_evicted() -> None:
    pc = PrefixCache(4 * TOKEN_BYTES)
    insert(pc, [1, 2])
    insert(pc, [3, 4])
    insert(pc, [5, 6])
    assert pc.evicted_tokens == 2
    assert lookup(pc, [1, 2]) == 0 and lookup(pc, [3, 4]) == 2 and lookup(pc, [5, 6]) == 2


def test_a_partial_lookup_refreshes_the_leaf_it_reads() -> None:
    pc = PrefixCache(4 * TOKEN_BYTES)
    insert(pc, [1, 2])
    insert(pc, [3, 4])
    assert lookup(pc, [1, 9]) == 1  # reads part of [1, 2]: evicting it would lose that part
    insert(pc, [5, 6])
    assert lookup(pc, [3, 4]) == 0 and lookup(pc, [1, 2]) == 2


def test_a_split_does_not_refresh_the_branch_it_cuts_off() -> None:
    """Inserting [1, 4] next to an older [1, 2, 3] uses [1] only: [2, 3] stays the least recently used."""
    pc = PrefixCache(3 * TOKEN_BYTES)
    insert(pc, [1, 2, 3])
    insert(pc, [1, 4])  # 4 tokens > 3: one leaf must go, and it is the old one
    assert pc.bytes == 2 * TOKEN_BYTES and pc.evicted_tokens == 2
    assert lookup(pc, [1, 4]) == 2
    assert lookup(pc, [1, 2, 3]) == 1


def test_eviction_removes_leaves_then_the_parents_they_leave_bare() -> None:
    pc = PrefixCache(5 * TOKEN_BYTES)
    insert(pc, [1, 2, 3])
    insert(pc, [1, 2, 4])
    assert cached_tokens(pc) == 4
    insert(pc, [7, 8])  # 6 > 5: the oldest leaf, [3], goes
    assert pc.bytes == 5 * TOKEN_BYTES and pc.evicted_tokens == 1
    assert lookup(pc, [1, 2, 3]) == 2 and lookup(pc, [1, 2, 4]) == 3 and lookup(pc, [7, 8]) == 2
    insert(pc, [9, 9, 9, 9, 9])  # fills the budget alone: everything else goes, [1, 2] once it is a leaf
    assert pc.bytes == 5 * TOKEN_BYTES and cached_tokens(pc) == 5
    assert pc.evicted_tokens == 1 + 5
    assert list(pc.root.children) == [9]
    assert lookup(pc, [9, 9, 9, 9, 9]) == 5 and lookup(pc, [1, 2, 4]) == 0 and lookup(pc, [7, 8]) == 0


@pytest.mark.parametrize("budget_tokens", [1, 2, 3, 5, 8])
def test_bytes_never_exceed_the_budget(budget_tokens: int) -> None:
    pc = PrefixCache(budget_tokens * TOKEN_BYTES)
    sequences = [[1, 2, 3], [1, 2, 4, 5], [6], [1, 7, 7, 7, 7, 7], [6, 6, 6], [1, 2, 3, 9], list(range(20, 30))]
    for keys in sequences:
        insert(pc, keys)
        assert pc.bytes <= pc.budget
        assert pc.bytes == cached_tokens(pc) * TOKEN_BYTES
        if len(keys) <= budget_tokens:  # what was just inserted and fits is kept whole
            assert lookup(pc, keys) == len(keys)
    assert pc.evicted_tokens > 0


def test_a_sequence_larger_than_the_budget_is_not_kept() -> None:
    pc = PrefixCache(3 * TOKEN_BYTES)
    insert(pc, [1, 2, 3, 4, 5])
    assert pc.bytes == 0 and cached_tokens(pc) == 0 and pc.evicted_tokens == 5
    assert lookup(pc, [1, 2, 3, 4, 5]) == 0


def test_budget_zero_disables_the_cache() -> None:
    pc = PrefixCache(0)
    assert not pc.enabled
    insert(pc, [1, 2, 3])
    assert pc.bytes == 0 and not pc.root.children
    out = empty_cache()
    assert pc.load(pc.match([1, 2, 3], limit=3), out) == 0
    assert out.length == 0
    assert pc.stats() == {"prefix_cache_bytes": 0, "prefix_cache_lookups": 0, "prefix_cache_hits": 0,
                          "prefix_cache_reused_tokens": 0, "prefix_cache_evicted_tokens": 0}


# ---------------------------------------------------------------------------------------------- stats


def test_stats_count_lookups_hits_and_reused_tokens() -> None:
    pc = PrefixCache(HUGE)
    assert set(pc.stats()) == {"prefix_cache_bytes", "prefix_cache_lookups", "prefix_cache_hits",
                               "prefix_cache_reused_tokens", "prefix_cache_evicted_tokens"}
    assert all(value == 0 for value in pc.stats().values())
    lookup(pc, [1, 2, 3])  # miss
    insert(pc, [1, 2, 3, 4])
    lookup(pc, [1, 2, 3, 4], limit=3)  # 3 tokens
    lookup(pc, [1, 2, 9])  # 2 tokens
    lookup(pc, [9])  # miss
    lookup(pc, [1, 2], limit=0)  # counted, nothing reused
    assert pc.stats() == {"prefix_cache_bytes": 4 * TOKEN_BYTES, "prefix_cache_lookups": 5,
                          "prefix_cache_hits": 2, "prefix_cache_reused_tokens": 5,
                          "prefix_cache_evicted_tokens": 0}


# ---------------------------------------------------------------------------------------------- image_keys

IMAGE = 151655


def test_image_keys_without_images_are_the_token_ids() -> None:
    prompt = [1, 2, IMAGE, 3]
    assert image_keys(prompt, None, [("abc", 1)]) == prompt
    assert image_keys(prompt, IMAGE, []) == prompt
    assert image_keys([1, 2, 3], IMAGE, [("abc", 0)]) == [1, 2, 3]
    keys = image_keys(prompt, None, [])
    assert keys == prompt and keys is not prompt


def test_image_tokens_become_negative_keys_per_digest_and_row() -> None:
    prompt = [10, IMAGE, IMAGE, IMAGE, 11, IMAGE, IMAGE, 12]
    keys = image_keys(prompt, IMAGE, [("aaa", 3), ("bbb", 2)])
    assert [keys[i] for i in (0, 4, 7)] == [10, 11, 12]  # text tokens unchanged
    image = [keys[i] for i in (1, 2, 3, 5, 6)]
    assert all(key < 0 for key in image)
    assert len(set(image)) == 5  # each (digest, row) its own key
    # The same image gives the same keys, wherever it sits in the prompt.
    again = image_keys([99, IMAGE, IMAGE, IMAGE], IMAGE, [("aaa", 3)])
    assert again[1:] == keys[1:4]
    # The same rows of a different image give different keys.
    other = image_keys(prompt, IMAGE, [("ccc", 3), ("bbb", 2)])
    assert other[1:4] != keys[1:4] and all(a != b for a, b in zip(other[1:4], keys[1:4], strict=True))
    assert other[5:7] == keys[5:7]
    assert [other[i] for i in (0, 4, 7)] == [10, 11, 12]


def test_prompts_share_a_prefix_only_up_to_a_different_image() -> None:
    pc = PrefixCache(HUGE)
    first = image_keys([1, 2, IMAGE, IMAGE, 3], IMAGE, [("cat", 2)])
    insert(pc, first)
    same = image_keys([1, 2, IMAGE, IMAGE, 3, 4], IMAGE, [("cat", 2)])
    other = image_keys([1, 2, IMAGE, IMAGE, 3], IMAGE, [("dog", 2)])
    assert lookup(pc, same) == 5
    assert lookup(pc, other) == 2


# ---------------------------------------------------------------------------------------------- property

ALPHABET = st.integers(0, 3)
OPERATION = st.tuples(st.booleans(), st.lists(ALPHABET, max_size=8), st.integers(-2, 2))


def present_prefixes(pc: PrefixCache) -> set[tuple[int, ...]]:
    """Every key sequence the tree can serve (all prefixes of root-to-node paths), checking each node's KV
    against what was inserted for its path along the way."""
    out: set[tuple[int, ...]] = {()}
    stack: list[tuple[_Node, tuple[int, ...]]] = [(pc.root, ())]
    while stack:
        node, path = stack.pop()
        for first, child in node.children.items():
            assert child.keys and child.keys[0] == first and child.parent is node
            full = path + child.keys
            k, v = expected_kv(full, len(full))
            assert torch.equal(child.k, k[:, :, len(path) :]) and torch.equal(child.v, v[:, :, len(path) :])
            out.update(full[: i + 1] for i in range(len(full)))
            stack.append((child, full))
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@hypothesis_settings(max_examples=100, deadline=None)
@given(budget_tokens=st.one_of(st.none(), st.integers(0, 12)), operations=st.lists(OPERATION, max_size=30))
def test_random_operations_match_a_model(budget_tokens: int | None,
                                         operations: list[tuple[bool, list[int], int]]) -> None:
    budget = HUGE if budget_tokens is None else budget_tokens * TOKEN_BYTES
    pc = PrefixCache(budget)
    inserted: list[list[int]] = []
    for is_insert, keys, slack in operations:
        if is_insert:
            insert(pc, keys)
            if pc.enabled and keys:
                inserted.append(keys)
            assert pc.bytes <= budget
            if budget_tokens is not None and 0 < len(keys) <= budget_tokens:
                assert lookup(pc, keys) == len(keys)  # the newest sequence is kept when it fits
        else:
            limit = max(0, len(keys) + slack)
            present = present_prefixes(pc)
            got = lookup(pc, keys, limit)  # also checks the copied KV against the inserted KV
            longest = max((common_prefix(keys, seq) for seq in inserted), default=0)
            assert got <= min(limit, longest)
            if budget_tokens is None:
                assert got == min(limit, longest)
            expected = max(n for n in range(min(limit, len(keys)) + 1) if tuple(keys[:n]) in present)
            assert got == expected
        present = present_prefixes(pc)
        assert all(any(tuple(seq[: len(p)]) == p for seq in inserted) for p in present if p)  # nothing made up
        assert pc.bytes == cached_tokens(pc) * TOKEN_BYTES == sum(n.nbytes() for n in pc._nodes())


def test_session_prefixes_are_evicted_last_until_the_session_is_forgotten() -> None:
    pc = PrefixCache(3 * TOKEN_BYTES)
    pc.insert([1, 2], filled([1, 2]), session="owner:s1")
    pc.insert([7], filled([7]))
    pc.insert([8], filled([8]))  # over budget: [7] goes although the session's [1, 2] is older
    assert lookup(pc, [7, 0]) == 0
    pc.forget_session("owner:s1")
    pc.insert([9], filled([9]))  # now plain LRU: the oldest leaf, [1, 2], goes
    assert lookup(pc, [1, 2, 0]) == 0
    assert lookup(pc, [8, 0]) == 1 and lookup(pc, [9, 0]) == 1
    assert pc.bytes <= 3 * TOKEN_BYTES


# ---------------------------------------------------------------------------------------------- match, lock, evict


def test_a_locked_match_is_not_evicted_until_unlocked() -> None:
    """A request's matched prefix stays while it prefills, although it is the least recently used."""
    pc = PrefixCache(4 * TOKEN_BYTES)
    insert(pc, [1, 2])
    match = pc.match([1, 2, 3], limit=3)
    assert match.length == 2
    pc.lock(match)
    insert(pc, [5, 6])
    insert(pc, [7, 8])  # over budget: [1, 2] is older but locked, so [5, 6] goes
    assert lookup(pc, [1, 2]) == 2 and lookup(pc, [5, 6]) == 0 and lookup(pc, [7, 8]) == 2
    pc.unlock(match)
    pc.unlock(match)  # a second unlock changes nothing
    insert(pc, [5, 6])  # the least recently used leaf, now [1, 2] (read before [7, 8]), goes
    assert lookup(pc, [1, 2]) == 0 and lookup(pc, [7, 8]) == 2 and lookup(pc, [5, 6]) == 2
    assert all(node.locks == 0 for node in pc._nodes())


def test_a_split_keeps_the_lock_on_both_halves() -> None:
    pc = PrefixCache(HUGE)
    insert(pc, [1, 2, 3, 4])
    match = pc.match([1, 2, 3, 4], limit=4)
    pc.lock(match)
    insert(pc, [1, 2, 9])  # splits the locked edge after [1, 2]
    assert pc.evict(HUGE) == 1 * TOKEN_BYTES  # only the unlocked [9] can go
    assert lookup(pc, [1, 2, 3, 4]) == 4
    pc.unlock(match)
    assert all(node.locks == 0 for node in pc._nodes())
    assert pc.evict(HUGE) == 4 * TOKEN_BYTES and pc.bytes == 0 and not pc.root.children


def test_evict_frees_at_least_the_size_asked_and_no_more_leaves_than_needed() -> None:
    pc = PrefixCache(HUGE)
    for keys in ([1, 2], [3], [4, 5, 6]):
        insert(pc, keys)
    assert pc.evict(3 * TOKEN_BYTES) == 3 * TOKEN_BYTES  # [1, 2] then [3], the oldest two
    assert lookup(pc, [1, 2]) == 0 and lookup(pc, [3]) == 0 and lookup(pc, [4, 5, 6]) == 3
    assert pc.evict(0) == 0 and pc.bytes == 3 * TOKEN_BYTES
    assert pc.evict(HUGE) == 3 * TOKEN_BYTES and pc.evicted_tokens == 6
