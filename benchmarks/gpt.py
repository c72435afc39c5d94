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
    fused_qkv: bool = False  # gpt-fast's wqkv: one linear for q, k and v (one GEMM a layer, not three)
    fused_gate_up: bool = False  # vLLM's gate_up_proj: one linear for w1 and w3 (their halves feed silu * up)

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


class Int4KVCache(nn.Module):
    """Atom's INT4 cache (``atom_ao.kv.format``): a paged cache laid out contiguously, each
    sequence owning ``pages_per_seq`` pages in order. ``attend`` writes the new K/V as INT4
    (``atom_ao::kv_write``) and runs the prompt on the bf16 K/V it just produced
    (``atom_ao::prefill_attention``) or one decode token against the INT4 cache
    (``atom_ao::kv_decode_attention``, flash-decoding). Positions come from the ``pos``
    tensor only (no host sync), so a decode step can be captured in a CUDA graph."""

    PAGE = 256

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype, device, rope_base: float | None = None,
                 hadamard: bool = False):
        super().__init__()
        from atom_ao.kv.format import new_paged_cache

        self.max_len = max_len
        self.pages_per_seq = -(-max_len // self.PAGE)
        meta_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
        kc, vc, km, vm = new_paged_cache(batch * self.pages_per_seq, n_kv_heads, self.PAGE, head_dim,
                                         meta_dtype=meta_dtype, device=device)
        for name, t in (("k_cache", kc), ("v_cache", vc), ("k_meta", km), ("v_meta", vm)):
            self.register_buffer(name, t, persistent=False)
        table = torch.arange(batch * self.pages_per_seq, device=device, dtype=torch.int32)
        self.register_buffer("block_table", table.view(batch, self.pages_per_seq), persistent=False)
        self.register_buffer("seq_base", torch.arange(batch, device=device) * self.pages_per_seq * self.PAGE,
                             persistent=False)
        # keys before RoPE (atom_ao.kv.rope; AtomKVCache(k_before_rope=True)): the decode kernel adds
        # a K bias (zero here: Llama has none, the add is timed as Qwen would pay it) and rotates
        rope = k_bias = None
        if rope_base is not None:
            from atom_ao.kv.rope import rope_table

            rope = rope_table(inv_freq(rope_base, head_dim, device), self.pages_per_seq * self.PAGE, device)
            k_bias = torch.zeros(n_kv_heads, head_dim, device=device)
        self.register_buffer("rope", rope, persistent=False)  # None buffers: no before-RoPE keys
        self.register_buffer("k_bias", k_bias, persistent=False)
        # AtomKVCache's default (rotate=True): K and V stored times the Hadamard matrix H (kv_write turns
        # them), queries times its +-1 signs with 1/sqrt(D) in the scale, the output turned back in the
        # decode's split-combining kernel
        from atom_ao.kv.format import hadamard_signs

        self.register_buffer("signs", hadamard_signs(head_dim, dtype, device) if hadamard else None, persistent=False)

    def step_inputs(self, pos: torch.Tensor, batch: int):
        """(slots, seq_lens) of a step at positions pos: the cache rows the new K/V go to (b * t,) and,
        for a decode step (t = 1), each sequence's filled length (b,) int32 (else None). Every layer's
        cache has the same layout, so the model makes them once a step (``Llama.forward``): made
        inside the shared block they cost small kernels in every layer."""
        slots = (self.seq_base[:, None] + pos[None, :]).reshape(-1)
        seq_lens = (pos[-1:] + 1).to(torch.int32).expand(batch).contiguous() if pos.shape[0] == 1 else None
        return slots, seq_lens

    def attend(self, q, k, v, pos, mask, k_pre=None, step=None):
        """``k``: the keys after RoPE; ``k_pre``: before it (what a before-RoPE cache stores);
        ``step``: ``step_inputs(pos, b)``, made here when not given."""
        b, hkv, t, d = k.shape
        slots, seq_lens = step if step is not None else self.step_inputs(pos, b)
        rows = lambda x: x.transpose(1, 2).reshape(b * t, hkv, d)  # noqa: E731
        stored = k if self.rope is None else k_pre
        rotate = self.signs is not None
        torch.ops.atom_ao.kv_write(rows(stored), rows(v), slots, self.k_cache, self.v_cache, self.k_meta, self.v_meta,
                                   rotate_k=rotate and self.rope is None, rotate_v=rotate)
        scale = d ** -0.5
        if t > 1:  # the prompt, written at positions 0..t-1 (attends to its own float K/V: no rotation)
            return torch.ops.atom_ao.prefill_attention(q, k, v, None, scale)
        if rotate and self.rope is None:
            q, scale = q @ self.signs, scale * d ** -0.5
        out = torch.ops.atom_ao.kv_decode_attention(q[:, :, 0], self.k_cache, self.v_cache, self.k_meta, self.v_meta,
                                                    self.block_table, seq_lens, None, scale, self.max_len,
                                                    self.rope, self.k_bias, v_rotated=rotate)
        return out[:, :, None]


def inv_freq(rope_base: float, head_dim: int, device=None) -> torch.Tensor:
    """RoPE's (head_dim / 2,) frequencies."""
    return 1.0 / (rope_base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


def rope_tables(shape: LlamaShape, max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    from atom_ao.kv.rope import rope_table

    cos, sin = rope_table(inv_freq(shape.rope_base, shape.head_dim, device), max_len, device)
    return cos, sin


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
        self.qkv_sizes = [s.n_heads * hd, s.n_kv_heads * hd, s.n_kv_heads * hd]
        if s.fused_qkv:
            self.wqkv = nn.Linear(s.dim, sum(self.qkv_sizes), bias=False)
        else:
            self.wq, self.wk, self.wv = (nn.Linear(s.dim, n, bias=False) for n in self.qkv_sizes)
        self.wo = nn.Linear(s.n_heads * hd, s.dim, bias=False)
        if s.fused_gate_up:
            self.w13 = nn.Linear(s.dim, 2 * s.intermediate, bias=False)
        else:
            self.w1 = nn.Linear(s.dim, s.intermediate, bias=False)
            self.w3 = nn.Linear(s.dim, s.intermediate, bias=False)
        self.w2 = nn.Linear(s.intermediate, s.dim, bias=False)
        self.attn_norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.ffn_norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.cache = None

    def attention(self, x, pos, cos, sin, mask, step=None):
        b, t, _ = x.shape
        hd, s = self.s.head_dim, self.s
        if s.fused_qkv:
            q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(b, t, s.n_heads, hd).transpose(1, 2)
        k = k.view(b, t, s.n_kv_heads, hd).transpose(1, 2)
        v = v.view(b, t, s.n_kv_heads, hd).transpose(1, 2)
        q, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if hasattr(self.cache, "attend"):
            return self.cache.attend(q, k_rot, v, pos, mask, k_pre=k, step=step)
        return self._sdpa(q, k_rot, v, pos, mask)

    def _sdpa(self, q, k, v, pos, mask):
        k_all, v_all = self.cache.update(pos, k, v)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)
        return y

    def forward(self, x, pos, cos, sin, mask, step=None):
        b, t, _ = x.shape
        y = self.attention(self.attn_norm(x), pos, cos, sin, mask, step)
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, -1))
        h = self.ffn_norm(x)
        if self.s.fused_gate_up:  # two column slices of one output: the silu * up quantizer reads them strided
            gate, up = self.w13(h).chunk(2, dim=-1)
        else:
            gate, up = self.w1(h), self.w3(h)
        return x + self.w2(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(s.vocab, s.dim)
        self.layers = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = nn.RMSNorm(s.dim, eps=1e-5)
        self.lm_head = nn.Linear(s.dim, s.vocab, bias=False)
        self.max_len = 0
        self.compile_blocks = False  # torch.compile one Block forward, shared by every layer
        # what compile_blocks compiles: "block" (one Block forward, one graph shared by every layer)
        # or "step" (all the layers as one graph, as gpt-fast compiles its whole decode step: Inductor
        # can then fuse across layers, e.g. a layer's last residual add with the next one's RMSNorm
        # statistic, at the price of a compile that grows with the layer count)
        self.compile_scope = "block"

    @staticmethod
    def _block_forward(layer, x, pos, cos, sin, mask, step=None):
        return layer(x, pos, cos, sin, mask, step)

    def setup_caches(self, batch: int, max_len: int, make_cache=None):
        """Allocate one cache per layer; ``make_cache(layer)`` builds another kind (INT4)."""
        dev, dtype = self.lm_head.weight.device, self.embed.weight.dtype
        for layer in self.layers:
            layer.cache = (make_cache(layer) if make_cache else
                           KVCache(batch, self.s.n_kv_heads, max_len, self.s.head_dim, dtype).to(dev))
        self.cos, self.sin = rope_tables(self.s, max_len, dev)
        self.causal = torch.ones(max_len, max_len, dtype=torch.bool, device=dev).tril()
        self.max_len = max_len

    @staticmethod
    def _layers_forward(layers, x, pos, cos, sin, mask, step=None):
        for layer in layers:
            x = layer(x, pos, cos, sin, mask, step)
        return x

    # the compiled function of each scope: "block" (_block_forward, one call a layer: parameters and
    # cache buffers are graph inputs of inlined nn modules, so the 32 layers share one graph per input
    # shape) and "step" (_layers_forward, every layer in one graph per input shape)
    _COMPILED: dict = {}

    @classmethod
    def _compiled(cls, scope: str):
        if scope not in cls._COMPILED:
            fn = cls._block_forward if scope == "block" else cls._layers_forward
            cls._COMPILED[scope] = torch.compile(fn, fullgraph=True, dynamic=False)
        return cls._COMPILED[scope]

    @classmethod
    def reset_compiled(cls) -> None:
        """Forget the compiled functions (with torch._dynamo.reset(): a fresh build)."""
        cls._COMPILED = {}

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids (b, t) at positions pos (t,) -> logits of the last position (b, vocab)."""
        x = self.embed(ids)
        cos, sin = self.cos[pos], self.sin[pos]
        mask = self.causal[pos][None, None]  # (1, 1, t, max_len): static shape for decode
        # the INT4 caches' write slots and decode lengths, once a step (the batch-64 H200 profile of
        # session 30 has a 62 us a step ``..._to_copy_add_clone_expand_select_slice`` kernel: likely
        # these, made in every layer; not yet re-timed)
        cache = self.layers[0].cache
        step = cache.step_inputs(pos, ids.shape[0]) if hasattr(cache, "step_inputs") else None
        if self.compile_scope not in ("block", "step"):
            raise ValueError(f"Llama.compile_scope must be 'block' or 'step', got {self.compile_scope!r}")
        if self.compile_blocks and self.compile_scope == "step":
            x = self._compiled("step")(self.layers, x, pos, cos, sin, mask, step)
        else:
            block = self._compiled("block") if self.compile_blocks else self._block_forward
            for layer in self.layers:
                x = block(layer, x, pos, cos, sin, mask, step)
        return self.lm_head(self.norm(x[:, -1]))
