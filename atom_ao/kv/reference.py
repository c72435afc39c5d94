"""Attention references in plain PyTorch: dequantize, then standard softmax attention (float32).

Masking, shared by every kernel: query ``i`` of sequence ``b`` sits at absolute position
``q_pos[b, i]`` and attends to key positions ``j`` with ``kv_start[b] <= j <= q_pos[b, i]``
(and ``j < kv_len[b]``). ``kv_start`` marks left padding (0 when None). A query with no key to
attend to (a padding query) gets output 0, not NaN. GQA: query head ``h`` reads KV head
``h // (heads / kv_heads)``. All shapes are static (no ``.item()``), so torch.compile traces
these as the CPU path of the ops.
"""

from __future__ import annotations

import torch

from atom_ao.kv.format import gather_kv, hadamard_rows
from atom_ao.kv.rope import rotate_keys


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                  kv_len: torch.Tensor, kv_start: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    """q (B, H, T, D), k / v (B, Hkv, S, D), q_pos (B, T), kv_len (B,) -> (B, H, T, D) in q.dtype."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    qf = q.float().reshape(b, hkv, h // hkv, t, d)
    scores = torch.einsum("bkgtd,bksd->bkgts", qf, k.float()) * sm_scale
    j = torch.arange(s, device=q.device)
    ok = (j[None, None, :] <= q_pos[:, :, None]) & (j[None, None, :] < kv_len[:, None, None])
    if kv_start is not None:
        ok = ok & (j[None, None, :] >= kv_start[:, None, None])
    ok = ok[:, None, None]  # (B, 1, 1, T, S)
    scores = scores.masked_fill(~ok, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key: 0, not NaN
    out = torch.einsum("bkgts,bksd->bkgtd", p, v.float())
    return out.reshape(b, h, t, d).to(q.dtype)


def prefill_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          kv_start: torch.Tensor | None, sm_scale: float) -> torch.Tensor:
    """Causal attention of a prompt over its own (unquantized) K/V: q (B, H, T, D), k / v (B, Hkv, T, D)."""
    b, _, t, _ = q.shape
    pos = torch.arange(t, device=q.device).expand(b, t)
    kv_len = torch.full((b,), t, device=q.device, dtype=torch.int64)
    return attention_ref(q, k, v, pos, kv_len, kv_start, sm_scale)


def cached_keys(k_cache: torch.Tensor, k_meta: torch.Tensor, block_table: torch.Tensor,
                k_rope: torch.Tensor | None = None, k_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The keys attention uses, (B, Hkv, S, D) float32: dequantized, and for keys cached before
    RoPE (``atom_ao.kv.rope``) plus ``k_bias`` (Hkv, D) and rotated by their slot."""
    k = gather_kv(k_cache, k_meta, block_table)
    if k_bias is not None:
        k = k + k_bias.float()[None, :, None, :]
    if k_rope is not None:
        k = rotate_keys(k, k_rope, torch.arange(k.shape[2], device=k.device))
    return k


def cached_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_meta: torch.Tensor,
                         v_meta: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                         kv_start: torch.Tensor | None, sm_scale: float, k_rope: torch.Tensor | None = None,
                         k_bias: torch.Tensor | None = None, v_rotated: bool = False) -> torch.Tensor:
    """T new queries per sequence against the INT4 cache, which already holds them (their K/V
    were written first): query i sits at position ``seq_lens[b] - T + i``. q (B, H, T, D).
    ``v_rotated``: the cache holds ``v @ H``, turned back here (the same as turning the output)."""
    t = q.shape[2]
    k = cached_keys(k_cache, k_meta, block_table, k_rope, k_bias)
    v = gather_kv(v_cache, v_meta, block_table)
    if v_rotated:
        v = hadamard_rows(v)
    lens = seq_lens.to(torch.int64)
    pos = lens[:, None] - t + torch.arange(t, device=q.device)[None, :]
    return attention_ref(q, k, v, pos, lens, kv_start, sm_scale)


def decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_meta: torch.Tensor,
                         v_meta: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
                         kv_start: torch.Tensor | None, sm_scale: float, k_rope: torch.Tensor | None = None,
                         k_bias: torch.Tensor | None = None, v_rotated: bool = False) -> torch.Tensor:
    """One query token per sequence, q (B, H, D), against the INT4 cache -> (B, H, D)."""
    out = cached_attention_ref(q[:, :, None], k_cache, v_cache, k_meta, v_meta, block_table, seq_lens,
                               kv_start, sm_scale, k_rope, k_bias, v_rotated)
    return out[:, :, 0]
