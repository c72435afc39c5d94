"""A minimal Llama decoder with a static KV cache, gpt-fast style, for the generation benchmark.

Static shapes everywhere (the cache is allocated for the whole run, decode attends over it with
a mask), so one decode step can be captured in a CUDA graph and replayed. The linears are plain
``nn.Linear``, so any torchao / atom_ao config quantizes them with ``quantize_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaShape:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    intermediate: int = 11008
    vocab: int = 32000
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


SHAPES = {
    "llama2-7b": LlamaShape(),
    "llama3-8b": LlamaShape(n_kv_heads=8, intermediate=14336, vocab=128256, rope_base=500000.0),
}


class KVCache(nn.Module):
    """bf16 cache (batch, kv_heads, max_len, head_dim); ``update`` writes at ``pos`` and returns it all."""

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


def rope_tables(shape: LlamaShape, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (shape.rope_base ** (torch.arange(0, shape.head_dim, 2, device=device).float() / shape.head_dim))
    ang = torch.outer(torch.arange(max_len, device=device).float(), inv)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    # x: (b, h, s, d); cos/sin: (s, d/2) -- the rotate-half convention
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x.float() * c + rot * s).type_as(x)


class Block(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        hd = s.head_dim
        self.wq = nn.Linear(s.dim, s.n_heads * hd, bias=False)
        self.wk = nn.Linear(s.dim, s.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(s.dim, s.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(s.n_heads * hd, s.dim, bias=False)
        self.w1 = nn.Linear(s.dim, s.intermediate, bias=False)
        self.w3 = nn.Linear(s.dim, s.intermediate, bias=False)
        self.w2 = nn.Linear(s.intermediate, s.dim, bias=False)
        self.attn_norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.ffn_norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.cache = None

    def attention(self, x, pos, cos, sin, mask):
        b, t, _ = x.shape
        hd, s = self.s.head_dim, self.s
        q = self.wq(x).view(b, t, s.n_heads, hd).transpose(1, 2)
        k = self.wk(x).view(b, t, s.n_kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(b, t, s.n_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.cache.attend(q, k, v, pos, mask) if hasattr(self.cache, "attend") else self._sdpa(q, k, v, pos, mask)

    def _sdpa(self, q, k, v, pos, mask):
        k_all, v_all = self.cache.update(pos, k, v)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)
        return y

    def forward(self, x, pos, cos, sin, mask):
        b, t, _ = x.shape
        y = self.attention(self.attn_norm(x), pos, cos, sin, mask)
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, -1))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(s.vocab, s.dim)
        self.layers = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.lm_head = nn.Linear(s.dim, s.vocab, bias=False)
        self.max_len = 0

    def setup_caches(self, batch: int, max_len: int, make_cache=None):
        """Allocate one cache per layer; ``make_cache(layer)`` builds another kind (INT4)."""
        dev, dtype = self.lm_head.weight.device, self.embed.weight.dtype
        for layer in self.layers:
            layer.cache = (make_cache(layer) if make_cache else
                           KVCache(batch, self.s.n_kv_heads, max_len, self.s.head_dim, dtype).to(dev))
        self.cos, self.sin = rope_tables(self.s, max_len, dev)
        self.causal = torch.ones(max_len, max_len, dtype=torch.bool, device=dev).tril()
        self.max_len = max_len

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (b, t) at positions pos (t,) -> logits of the last position (b, vocab)."""
        x = self.embed(ids)
        cos, sin = self.cos[pos], self.sin[pos]
        mask = self.causal[pos][None, None]  # (1, 1, t, max_len): static shape for decode
        for layer in self.layers:
            x = layer(x, pos, cos, sin, mask)
        return self.lm_head(self.norm(x[:, -1]))
