"""The ``"atom_int4"`` attention implementation for transformers (registered on import).

transformers' Llama-style attention calls ``past_key_values.update(k, v, layer)`` and passes
what it returns straight to the attention function. With an ``AtomKVCache`` that is an
``AtomKVView`` (the layer's INT4 pool + the new float K/V), and this function picks the op:

=====================================================  ===========================================
step                                                   op
=====================================================  ===========================================
first prompt into an empty cache, ``prefill="float"``  ``prefill_attention`` on the new float K/V
one new token per sequence (decode)                    ``kv_decode_attention`` on the INT4 cache
several new tokens after others, or ``prefill="int4"``  ``kv_prefill_attention`` on the INT4 cache
=====================================================  ===========================================

The ops run Triton kernels on CUDA and the plain-PyTorch references elsewhere. Padding: the
registered mask function hands over transformers' 2-D padding mask (widened to a static cache's
length, so a compiled step sees one shape); it must be left
padding (what ``generate`` uses for decoder-only models), turned into ``kv_start`` = the first
attended position of each sequence. Without an ``AtomKVCache`` (no cache, a ``DynamicCache``)
the function computes ordinary causal attention on the tensors it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import atom_ao.ops.kv_decode_attention  # noqa: F401  (registers the ops)
import atom_ao.ops.kv_prefill_attention  # noqa: F401
from atom_ao.kv.cache import AtomKVView

ATTN_IMPLEMENTATION = "atom_int4"


def _kv_start(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise NotImplementedError(
            f"{ATTN_IMPLEMENTATION}: expected transformers' 2-D padding mask, got shape {tuple(attention_mask.shape)}"
        )
    # left padding: the first True of each row (0 when the row has no padding)
    return attention_mask.to(torch.int32).argmax(dim=-1).to(torch.int32)


def _plain_attention(query, key, value, kv_start, scale):
    """Causal attention on float tensors (no AtomKVCache): queries are the last T positions."""
    t, s = query.shape[2], key.shape[2]
    if t == s:
        return torch.ops.atom_ao.prefill_attention(query, key, value, kv_start, scale)
    j = torch.arange(s, device=query.device)
    ok = j[None, :] <= (s - t + torch.arange(t, device=query.device))[:, None]  # (T, S)
    if kv_start is not None:
        ok = ok[None, None] & (j >= kv_start[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=ok, scale=scale,
                                          enable_gqa=key.shape[1] != query.shape[1])


def atom_int4_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: query (B, H, T, D) -> ((B, T, H, D), None)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    kv_start = _kv_start(attention_mask)
    if not isinstance(key, AtomKVView):
        return _plain_attention(query, key, value, kv_start, scale).transpose(1, 2), None
    layer = key.layer
    t = query.shape[2]
    pool = (layer.k_cache, layer.v_cache, layer.k_meta, layer.v_meta, layer.block_table, layer.seq_lens)
    if key.first and layer.prefill == "float":
        out = torch.ops.atom_ao.prefill_attention(query, key.key, key.value, kv_start, scale)
        return out.transpose(1, 2), None
    d = query.shape[-1]
    if layer.rotate_k:  # the cache holds k @ H: (q @ H) . (k @ H) = q . k, with q @ H = (q @ signs) / sqrt(D)
        query = query @ layer.hadamard_signs
        scale = scale * d ** -0.5
    rope = (layer.rope, layer.k_bias)  # keys cached before RoPE (both None otherwise)
    if t == 1:  # v_rotated (the cache holds v @ H): the op turns its output back (out = out_H @ H)
        out = torch.ops.atom_ao.kv_decode_attention(query[:, :, 0], *pool, kv_start, scale, layer.max_len_hint(),
                                                    *rope, v_rotated=layer.rotate)
        return out[:, None], None
    out = torch.ops.atom_ao.kv_prefill_attention(query, *pool, kv_start, scale, *rope)
    if layer.rotate:  # the cache holds v @ H: out = out_H @ H
        out = ((out.float() @ layer.hadamard_signs.float()) * d ** -0.5).to(out.dtype)
    return out.transpose(1, 2), None


def atom_int4_mask(*args, attention_mask: torch.Tensor | None = None, kv_length: int | None = None, **kwargs):
    """Mask function for ``"atom_int4"``: the 2-D padding mask (no data-dependent shortcut, so a
    compiled decode step has no graph break), widened with True to ``kv_length`` columns: with a
    static cache that is ``max_cache_len``, so the mask a compiled decode step takes has one
    shape. As it came (seen + new tokens wide, one more each step), transformers 5.17's generate
    recompiled the step with a dynamic width and CUDA graphs recorded a graph per width (session
    20). The added columns lie after every attended position: ``kv_start`` does not change."""
    if attention_mask is None or kv_length is None or attention_mask.dim() != 2:
        return attention_mask
    extra = kv_length - attention_mask.shape[-1]
    if isinstance(extra, int) and extra > 0:  # only eagerly-known widths (growing caches: no extra)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], extra)], dim=-1)
    return attention_mask


def enable(model) -> None:
    """Switch ``model`` (and its sub-models) to the ``"atom_int4"`` attention implementation."""
    if getattr(model.config, "_attn_implementation", None) != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)


AttentionInterface.register(ATTN_IMPLEMENTATION, atom_int4_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, atom_int4_mask)
