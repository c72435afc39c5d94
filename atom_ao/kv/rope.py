"""Keys quantized before RoPE: the rotation tables and the plain-PyTorch rotations (the spec).

With ``AtomKVCache(k_before_rope=True)`` the cache holds each key *before* RoPE, minus the
``k_proj`` bias, and the attention ops add the bias back and rotate every dequantized key by its
position (the paper's choice; Atom applies RoPE inside its attention kernel). Why: Qwen2's K bias
(up to ~210 on a few channels, keys ~2) is one constant vector a head before RoPE, so it can be
taken out exactly; after RoPE it turns with the position and sets every token's INT4 range.

transformers' RoPE ("rotate_half" form) pairs channel i with i + D/2 and turns the pair by
``position * inv_freq[i]``; its cos / sin may carry an ``attention_scaling`` factor a. The cache
un-rotates the keys it is given with pure rotations and the attention ops rotate back with the
same, so a is carried through untouched (the stored key is a * k). A position here is the slot
of the token in its sequence (0, 1, ...): with left padding the model's positions start later,
but un-rotating and re-rotating by the same slot gives back exactly the model's key.

The table is ``(2, positions, D/2)`` float32: ``[0]`` cos, ``[1]`` sin of ``slot * inv_freq``
(the angle in float32, as transformers computes it).
"""

from __future__ import annotations

import torch


def rotary_embedding(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's transformers ``rotary_emb`` module (with ``inv_freq``), or None."""
    return next((m for name, m in model.named_modules() if name.endswith("rotary_emb") and hasattr(m, "inv_freq")),
                None)


def rope_inv_freq(model: torch.nn.Module) -> torch.Tensor:
    """The model's RoPE frequencies (D/2,) float32, RoPE scaling included; a clear error when it
    has none. (``AtomKVLayer`` refuses frequencies that do not cover the whole head.)"""
    rotary = rotary_embedding(model)
    if rotary is None:
        raise NotImplementedError("k_before_rope: the model has no rotary_emb with inv_freq (RoPE) to apply")
    return rotary.inv_freq.detach().float().cpu()


def rope_table(inv_freq: torch.Tensor, positions: int, device=None) -> torch.Tensor:
    """(2, positions, D/2) float32: cos and sin of ``slot * inv_freq`` for slots 0..positions-1."""
    pos = torch.arange(positions, dtype=torch.float32, device=device)
    angle = pos[:, None] * inv_freq.to(device=device, dtype=torch.float32)[None, :]
    return torch.stack([angle.cos(), angle.sin()])


def _turn(k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = k.shape[-1] // 2
    k1, k2 = k[..., :h], k[..., h:]
    return torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1)


def rotate_keys(k: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """RoPE by slot: k (..., S, D) float, slots (S,) or broadcastable (..., S) int -> k rotated."""
    return _turn(k, table[0][slots], table[1][slots])  # cos / sin (..., S, D/2)


def unrotate_keys(k: torch.Tensor, table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The inverse of ``rotate_keys`` (rotation by minus the angle)."""
    return _turn(k, table[0][slots], -table[1][slots])


def check_rope_args(k_rope: torch.Tensor | None, k_bias: torch.Tensor | None, kv_heads: int, head_dim: int,
                    positions: int, device: torch.device, what: str) -> None:
    """Shapes, dtypes and devices of the ops' optional ``k_rope`` table and ``k_bias``."""
    if k_rope is not None:
        if k_rope.dim() != 3 or k_rope.shape[0] != 2 or k_rope.shape[2] * 2 != head_dim or k_rope.dtype != torch.float32:
            raise ValueError(f"{what}: k_rope must be float32 (2, positions, {head_dim // 2}), got "
                             f"{k_rope.dtype} {tuple(k_rope.shape)}")
        if k_rope.shape[1] < positions:
            raise ValueError(f"{what}: k_rope covers {k_rope.shape[1]} positions, the cache holds up to {positions}")
        if k_rope.device != device:
            raise ValueError(f"{what}: k_rope is on {k_rope.device}, q on {device}")
    if k_bias is not None:
        if k_rope is None:
            raise ValueError(f"{what}: k_bias is for keys cached before RoPE; pass k_rope too")
        if tuple(k_bias.shape) != (kv_heads, head_dim) or k_bias.dtype != torch.float32 or k_bias.device != device:
            raise ValueError(f"{what}: k_bias must be float32 ({kv_heads}, {head_dim}) on {device}, got "
                             f"{k_bias.dtype} {tuple(k_bias.shape)} on {k_bias.device}")
