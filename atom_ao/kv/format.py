"""The INT4 KV-cache format, in plain PyTorch: the spec the KV kernels are tested against.

Quantization: each token's K (or V) vector of one head, ``head_dim`` = D values, is one group,
quantized to *asymmetric* INT4 when it is written to the cache (never again afterwards):

* ``scale = (max - min) / 15`` and ``zero = min``, computed in float32 and stored rounded to
  ``meta_dtype`` (fp16, or bf16 for bf16 models);
* ``q = clamp(round((x - zero) * (1 / scale)), 0, 15)`` with the *stored* scale and zero (so
  the codes fit what is dequantized), float32 arithmetic in this order, round half to even;
  a scale of 0 (a constant row) or NaN gives ``1 / scale := 0``;
* dequantized: ``x^ = q * scale + zero``. A NaN in a row makes its scale NaN, so it reads back
  as NaN. K is quantized *after* RoPE: the cache holds exactly the keys attention uses.

Packing (``pack_kv``): two codes per byte along head_dim; byte ``j`` (0 <= j < D/2) holds
element ``j`` in its low nibble and element ``j + D/2`` in its high nibble (unsigned nibbles).
A kernel loads a (tokens, D/2) byte tile and gets the two halves of the head dimension with one
mask and one shift; q splits the same way, so a dot product is two half-dots, no interleaving.

Paged storage of one layer (a contiguous cache is the special case of one sequence per run of
pages, which is how ``AtomKVCache`` lays it out):

==============  ====================================================  =======================
tensor          shape                                                 dtype
==============  ====================================================  =======================
cache (K or V)  (num_pages, kv_heads, page_size, D / 2)               uint8
meta  (K or V)  (num_pages, kv_heads, 2, page_size): [scale; zero]    fp16 / bf16
block_table     (batch, max_pages): page of each block of a sequence  int32
seq_lens        (batch,): tokens in the cache, the new ones included  int32
slots           (tokens,): where a new token goes, page * page_size   int64
                + offset; negative = skip (padding)
==============  ====================================================  =======================

Token ``t`` of sequence ``b`` lives in page ``block_table[b, t // page_size]`` at offset
``t % page_size``. Scales and zeros are planar per page so that a tile of tokens reads them
as two contiguous vectors.
"""

from __future__ import annotations

import torch

KV_QMAX = 15


def check_head_dim(d: int, what: str = "kv cache") -> None:
    if d < 32 or d > 256 or d & (d - 1):
        raise ValueError(f"{what}: head_dim must be a power of two in [32, 256], got {d}")


def pack_kv(q: torch.Tensor) -> torch.Tensor:
    """(..., D) codes in [0, 15] -> (..., D / 2) uint8: byte j = q[j] | q[j + D/2] << 4."""
    half = q.shape[-1] // 2
    q = q.to(torch.uint8)
    return q[..., :half] | (q[..., half:] << 4)


def unpack_kv(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_kv``: (..., D / 2) uint8 -> (..., D) uint8 codes."""
    return torch.cat([packed & 0xF, packed >> 4], dim=-1)


def quantize_kv(x: torch.Tensor, meta_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., D) -> (packed (..., D/2) uint8, scale (...), zero (...)), both ``meta_dtype``."""
    xf = x.float()
    lo, hi = xf.amin(dim=-1), xf.amax(dim=-1)  # both propagate NaN
    scale = ((hi - lo) / KV_QMAX).to(meta_dtype)
    zero = lo.to(meta_dtype)
    s, z = scale.float(), zero.float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    t = (xf - z[..., None]) * inv[..., None]
    q = torch.nan_to_num(t, nan=0.0).clamp(0, KV_QMAX).round()
    return pack_kv(q), scale, zero


def dequantize_kv(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., D/2) uint8 + (...) scale, zero -> (..., D) in ``dtype`` (computed in float32)."""
    return (unpack_kv(packed).float() * scale.float()[..., None] + zero.float()[..., None]).to(dtype)


def hadamard(d: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The (d, d) orthonormal, symmetric Sylvester-Hadamard matrix (d a power of two): H @ H = I.

    Optional rotation of the stored vectors (``AtomKVCache(rotate=True)``): the cache holds
    ``k @ H`` and ``v @ H``; since ``(q @ H) . (k @ H) = q . k``, attention reads it with rotated
    queries and un-rotates its output (``out @ H``). The rotation spreads a few large channels
    over all of head_dim, so the per-token min / max of a row stops being set by them."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / d ** 0.5).to(dtype=dtype, device=device)


def hadamard_signs(d: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``hadamard(d) * sqrt(d)``: its +-1 entries, exact in any float type (a query times them, with
    1 / sqrt(d) folded into the attention's scale, is ``q @ H`` with one rounding)."""
    return (hadamard(d, torch.float64) * d ** 0.5).round().to(dtype=dtype, device=device)


def hadamard_rows(x: torch.Tensor) -> torch.Tensor:
    """``x @ H`` over the last dimension in float32 (the rotation ``kv_write`` applies with
    ``rotate_k`` / ``rotate_v``)."""
    return x.float() @ hadamard(x.shape[-1], torch.float32, x.device)


def check_cache(cache: torch.Tensor, meta: torch.Tensor, what: str = "cache") -> None:
    """Shapes and dtypes of one (cache, meta) pair; a clear error for each mismatch."""
    if cache.dim() != 4 or cache.dtype != torch.uint8:
        raise ValueError(f"{what}: expected uint8 (num_pages, kv_heads, page_size, D/2), got {cache.dtype} {tuple(cache.shape)}")
    p, h, ps, _ = cache.shape
    if tuple(meta.shape) != (p, h, 2, ps) or meta.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{what}: meta must be fp16/bf16 {(p, h, 2, ps)}, got {meta.dtype} {tuple(meta.shape)}")
    if cache.stride(-1) != 1 or meta.stride(-1) != 1:
        raise ValueError(f"{what}: the last dimension of cache and meta must be contiguous")


def new_paged_cache(num_pages: int, kv_heads: int, page_size: int, head_dim: int,
                    meta_dtype: torch.dtype = torch.float16, device=None):
    """Empty (K cache, V cache, K meta, V meta) of ``num_pages`` pages (zeros: reads as 0.0)."""
    check_head_dim(head_dim)
    cache = lambda: torch.zeros(num_pages, kv_heads, page_size, head_dim // 2, dtype=torch.uint8, device=device)  # noqa: E731
    meta = lambda: torch.zeros(num_pages, kv_heads, 2, page_size, dtype=meta_dtype, device=device)  # noqa: E731
    return cache(), cache(), meta(), meta()


# ---------------------------------------------------------------- write and read, reference


def kv_write_ref(k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, k_meta: torch.Tensor, v_meta: torch.Tensor) -> None:
    """Quantize new rows (tokens, kv_heads, D) of K and V into their slots, in place.

    Static shapes, so that torch.compile traces it: a skipped row (negative slot) repeats the
    write of the first kept row (same slot, same values), or rewrites slot 0 with what it holds
    when no row is kept."""
    n = k.shape[0]
    if n == 0:
        return
    page_size = k_cache.shape[2]
    slots = slots.to(device=k.device, dtype=torch.int64)
    keep = slots >= 0
    first = torch.argmax(keep.to(torch.int32))  # 0 when nothing is kept
    any_keep = keep.any()
    src = torch.where(keep, torch.arange(n, device=k.device), first)
    slot = torch.where(any_keep, slots[src], 0)
    page, off = slot // page_size, slot % page_size
    for x, cache, meta in ((k, k_cache, k_meta), (v, v_cache, v_meta)):
        packed, scale, zero = quantize_kv(x[src], meta.dtype)  # (n, H, D/2), (n, H)
        cache[page, :, off] = torch.where(any_keep, packed, cache[page, :, off])
        meta[page, :, 0, off] = torch.where(any_keep, scale, meta[page, :, 0, off])
        meta[page, :, 1, off] = torch.where(any_keep, zero, meta[page, :, 1, off])


def gather_kv(cache: torch.Tensor, meta: torch.Tensor, block_table: torch.Tensor,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize every block a sequence's table names: (batch, kv_heads, max_pages * page_size, D).

    Positions past a sequence's length hold whatever the page holds; callers mask them."""
    b, max_pages = block_table.shape
    _, h, ps, half = cache.shape
    pages = block_table.long().reshape(-1)
    c = cache[pages].reshape(b, max_pages, h, ps, half).permute(0, 2, 1, 3, 4).reshape(b, h, max_pages * ps, half)
    m = meta[pages].reshape(b, max_pages, h, 2, ps).permute(0, 2, 3, 1, 4).reshape(b, h, 2, max_pages * ps)
    return dequantize_kv(c, m[:, :, 0], m[:, :, 1], dtype)
