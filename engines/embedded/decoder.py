"""Forward passes of Llama-family decoders over per-sequence KV caches that the engine owns.

transformers loads the weights and provides the modules (norms, projections, MLPs, rotary tables); this
module only orchestrates them. Owning the cache is what lets the scheduler batch the decode of sequences
of different lengths without padding, fork a prompt's cache for `n` choices, and (later) share prefixes.

Vision-language models (Qwen2.5-VL) run through the same code: their text decoder is a Qwen2 decoder whose
rotary embedding takes 3-D positions (M-RoPE). The prompt's image tokens get (time, row, column) positions
and vision-encoder embeddings in place of token embeddings; after the prompt every position is 1-D again,
shifted by the sequence's `position_offset`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral", "qwen2_5_vl"})


class KVCache:
    """Keys and values of one sequence: [layers, kv_heads, capacity, head_dim], grown by doubling."""

    __slots__ = ("k", "v", "length", "position_offset")

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype) -> None:
        self.k = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0
        # Rotary position of the next token minus `length`; non-zero after an M-RoPE image prompt.
        self.position_offset = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, self.capacity * 2)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def fork(self) -> KVCache:
        twin = KVCache.__new__(KVCache)
        twin.k = self.k.clone()
        twin.v = self.v.clone()
        twin.length = self.length
        twin.position_offset = self.position_offset
        return twin

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class Decoder:
    def __init__(self, model: Any) -> None:
        if model.config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"the embedded engine runs {sorted(SUPPORTED_MODEL_TYPES)} architectures, "
                f"not {model.config.model_type!r}")
        config = getattr(model.config, "text_config", None) or model.config
        if getattr(config, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported by the embedded engine")
        inner = getattr(model.model, "language_model", None) or model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.lm_head
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.dtype = self.embed.weight.dtype
        self.vocab_size = config.vocab_size
        # Qwen3 normalises queries and keys per head before the rotary embedding.
        self.qk_norm = hasattr(self.layers[0].self_attn, "q_norm")

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(len(self.layers), self.kv_heads, self.head_dim, capacity, self.dtype)

    def _project_qkv(self, attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, s, _ = h.shape
        q = attn.q_proj(h).view(b, s, self.num_heads, self.head_dim)
        k = attn.k_proj(h).view(b, s, self.kv_heads, self.head_dim)
        v = attn.v_proj(h).view(b, s, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q = attn.q_norm(q)
            k = attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v.transpose(1, 2)

    def prefill(self, cache: KVCache, token_ids: list[int], *, positions: torch.Tensor | None = None,
                embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Append `token_ids` to one sequence; return the logits after its last token, shape [vocab].

        `positions` ([3, len] M-RoPE positions) and `embeds` (a boolean mask over the tokens and the rows that
        replace their embeddings) are given for the image part of a vision prompt.
        """
        past, s = cache.length, len(token_ids)
        cache.reserve(past + s)
        ids = torch.tensor([token_ids], dtype=torch.long)
        x = self.embed(ids)
        if embeds is not None:
            at, rows = embeds
            x[0, at] = rows.to(x.dtype)
        if positions is None:
            positions = torch.arange(past, past + s).unsqueeze(0) + cache.position_offset
        else:
            positions = positions.unsqueeze(1)  # [3, batch=1, len]
        cos, sin = self.rotary(x, positions)
        end = past + s
        mask: torch.Tensor | None = None
        if past:  # new tokens see the whole cached prefix, and causally each other
            mask = torch.ones(s, end, dtype=torch.bool).tril(diagonal=past)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._project_qkv(attn, layer.input_layernorm(x), cos, sin)
            cache.k[i, :, past:end] = k[0]
            cache.v[i, :, past:end] = v[0]
            out = F.scaled_dot_product_attention(
                q, cache.k[i, :, :end].unsqueeze(0), cache.v[i, :, :end].unsqueeze(0),
                attn_mask=mask, is_causal=mask is None and s > 1, scale=self.scale, enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.length = end
        return self.lm_head(self.norm(x[:, -1]))[0]

    def decode(self, caches: list[KVCache], token_ids: list[int]) -> torch.Tensor:
        """Append one token to each sequence, batched; return logits of shape [batch, vocab]."""
        return self.extend(caches, [[token] for token in token_ids])

    def extend(self, caches: list[KVCache], rows: list[list[int]]) -> torch.Tensor:
        """Append a few tokens to each sequence (one when decoding; with drafted tokens when speculating),
        batched; return the logits after every appended token, sequence after sequence: [tokens, vocab]."""
        counts = [len(tokens) for tokens in rows]
        total = sum(counts)
        lengths = [cache.length for cache in caches]
        for cache, count in zip(caches, counts, strict=True):
            cache.reserve(cache.length + count)
        x = self.embed(torch.tensor([t for tokens in rows for t in tokens], dtype=torch.long).unsqueeze(0))
        positions = [cache.length + cache.position_offset + i for cache, count in zip(caches, counts, strict=True)
                     for i in range(count)]
        cos, sin = self.rotary(x, torch.tensor(positions, dtype=torch.long).unsqueeze(0))
        # Drafted tokens see the cache and, causally, each other.
        masks = [None if count == 1 else torch.ones(count, pos + count, dtype=torch.bool).tril(diagonal=pos)
                 for pos, count in zip(lengths, counts, strict=True)]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self._project_qkv(attn, layer.input_layernorm(x), cos, sin)  # [1, heads, tokens, dim]
            outs, at = [], 0
            for j, cache in enumerate(caches):
                pos, end = lengths[j], lengths[j] + counts[j]
                cache.k[i, :, pos:end] = k[0, :, at : at + counts[j]]
                cache.v[i, :, pos:end] = v[0, :, at : at + counts[j]]
                outs.append(F.scaled_dot_product_attention(
                    q[:, :, at : at + counts[j]], cache.k[i, :, :end].unsqueeze(0),
                    cache.v[i, :, :end].unsqueeze(0), attn_mask=masks[j], scale=self.scale, enable_gqa=True))
                at += counts[j]
            out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, total, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        for cache, count in zip(caches, counts, strict=True):
            cache.length += count
        return self.lm_head(self.norm(x[0]))
