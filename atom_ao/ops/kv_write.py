"""``atom_ao::kv_write``: quantize new K/V rows to INT4 and store them in the (paged) cache.

One launch writes K and V of any number of tokens (a prompt, or one token per sequence in
decode): a program takes ``BLOCK_R`` (token, kv head) rows of K or of V, loads each row as its two halves
(elements j and j + D/2 share a byte, ``atom_ao.kv.format``), reduces min / max over both,
rounds scale and zero to the meta dtype, quantizes with those stored values, and writes the
packed bytes and the two meta values. A token whose slot is negative is skipped.

It agrees with ``kv_write_ref`` bit for bit: float32 arithmetic in the reference's order,
IEEE divisions (``div_rn``), rounding half to even by adding and subtracting 1.5 * 2**23 to
a value already clamped to [0, 15] (the clamp also keeps the multiply and the add apart).

``rotate_k`` / ``rotate_v``: the rows are first turned by the Hadamard matrix (``AtomKVCache``'s
default; ``atom_ao.kv.format.hadamard``), in the kernel: with S the +-1 Sylvester matrix of D/2,
``x @ H = [x_lo @ S + x_hi @ S, x_lo @ S - x_hi @ S] / sqrt(D)``, two tensor-core dots of the
halves the kernel loads anyway (16-bit rows times +-1 are exact products, summed in float32).
One launch instead of two (B, H, 1, D) x (D, D) matmuls before it (session 24). The sums run in
another order than the reference's float32 matmul, so a code can differ by one where a value sits
on a rounding boundary (tests: dequantized values, not bits).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from atom_ao.kv.format import check_cache, check_head_dim, hadamard_rows, kv_write_ref
from atom_ao.ops import pdl as pdl_switch
from atom_ao.ops.pdl import wait_then_release  # a bare name: Inductor copies the jit helpers a kernel calls by name
from atom_ao.ops.kv_tiles import dot_dtype, dot_precision, sylvester_halves

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23


@triton.jit
def _hadamard_halves(lo, hi, HALF: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """(lo, hi) halves of rows x -> the halves of x @ H (H = the D = 2 HALF Sylvester matrix / sqrt(D))
    in float32."""
    top, bottom = sylvester_halves(lo, hi, HALF, DOT, PREC)
    c = 1.0 / tl.sqrt(2.0 * HALF)
    return top * c, bottom * c


@triton.jit
def _quantize_rows(x_ptr, x_off, c_ptr, c_off, m_ptr, scale_off, zero_off, ok, HALF: tl.constexpr,
                   ROTATE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Quantize the rows at ``x_ptr + x_off`` (each D = 2 * HALF contiguous values; with ROTATE
    times the Hadamard matrix first) into the cache bytes at ``c_ptr + c_off`` and the meta values
    at ``m_ptr + scale_off / zero_off``."""
    cols = tl.arange(0, HALF)
    lo = tl.load(x_ptr + x_off[:, None] + cols[None, :], mask=ok[:, None], other=0.0)
    hi = tl.load(x_ptr + x_off[:, None] + HALF + cols[None, :], mask=ok[:, None], other=0.0)
    if ROTATE:
        lo, hi = _hadamard_halves(lo, hi, HALF, DOT, PREC)
    lo = lo.to(tl.float32)
    hi = hi.to(tl.float32)
    mx = tl.maximum(tl.max(lo, axis=1), tl.max(hi, axis=1))
    mn = tl.minimum(tl.min(lo, axis=1), tl.min(hi, axis=1))
    # a float max may drop NaN: count them and make the scale NaN, as the reference does
    n_nan = tl.sum((lo != lo).to(tl.int32), axis=1) + tl.sum((hi != hi).to(tl.int32), axis=1)
    scale = tl.math.div_rn(mx - mn, tl.full(mx.shape, 15.0, tl.float32))
    scale = tl.where(n_nan > 0, float("nan"), scale)
    mn = tl.where(n_nan > 0, float("nan"), mn)
    scale_s = _to_meta(scale, m_ptr.dtype.element_ty)
    zero_s = _to_meta(mn, m_ptr.dtype.element_ty)
    s = scale_s.to(tl.float32)
    z = zero_s.to(tl.float32)
    pos = s > 0
    inv = tl.where(pos, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), tl.where(pos, s, 1.0)), 0.0)
    q_lo = _round_code((lo - z[:, None]) * inv[:, None])
    q_hi = _round_code((hi - z[:, None]) * inv[:, None])
    packed = (q_lo | (q_hi << 4)).to(tl.uint8)
    tl.store(c_ptr + c_off[:, None] + cols[None, :], packed, mask=ok[:, None])
    tl.store(m_ptr + scale_off, scale_s, mask=ok)
    tl.store(m_ptr + zero_off, zero_s, mask=ok)


@triton.jit
def _to_meta(x, dtype: tl.constexpr):
    """float32 -> fp16 / bf16, round to nearest even as torch does. bf16 is rounded in integer
    arithmetic first (the interpreter's float32 -> bf16 cast truncates), which leaves the final
    cast exact on every backend."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def _round_code(t):
    """float32 -> int32 code: clamp to [0, 15], round half to even, NaN -> 0."""
    is_nan = t != t
    t = tl.minimum(tl.maximum(t, 0.0), 15.0)
    r = (t + _ROUND_MAGIC) - _ROUND_MAGIC
    return tl.where(is_nan, 0.0, r).to(tl.int32)


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, slot_ptr, kc_ptr, vc_ptr, km_ptr, vm_ptr,
    R, HKV, page_size,
    s_kn, s_kh, s_vn, s_vh,
    s_cp, s_ch, s_ct,  # K and V caches share strides (checked by the launcher)
    s_mp, s_mh, s_mw,  # and so do their metas
    HALF: tl.constexpr, BLOCK_R: tl.constexpr,
    ROTATE_K: tl.constexpr, ROTATE_V: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    PDL: tl.constexpr,  # launched with programmatic dependent launch (atom_ao.ops.pdl)
):
    wait_then_release(PDL)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < R
    n = rows // HKV
    h = rows % HKV
    slot = tl.load(slot_ptr + n, mask=ok, other=-1)
    ok = ok & (slot >= 0)
    slot = tl.where(ok, slot, 0)
    page = slot // page_size
    off = slot % page_size
    c_off = page * s_cp + h * s_ch + off * s_ct
    m_off = page * s_mp + h * s_mh + off
    n64 = n.to(tl.int64)
    # K and V rows in programs of their own: a decode write is one or two row tiles, and in one program
    # each step (loads, dots, stores) would wait on the one before
    if tl.program_id(1) == 0:
        _quantize_rows(k_ptr, n64 * s_kn + h * s_kh, kc_ptr, c_off, km_ptr, m_off, m_off + s_mw, ok, HALF,
                       ROTATE_K, DOT, PREC)
    else:
        _quantize_rows(v_ptr, n64 * s_vn + h * s_vh, vc_ptr, c_off, vm_ptr, m_off, m_off + s_mw, ok, HALF,
                       ROTATE_V, DOT, PREC)


def check_write_args(k, v, slots, k_cache, v_cache, k_meta, v_meta) -> None:
    check_cache(k_cache, k_meta, "kv_write: K cache")
    check_cache(v_cache, v_meta, "kv_write: V cache")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"kv_write: k and v must both be (tokens, kv_heads, D), got {tuple(k.shape)} / {tuple(v.shape)}")
    n, h, d = k.shape
    check_head_dim(d, "kv_write")
    if k_cache.shape[1] != h or k_cache.shape[3] * 2 != d or v_cache.shape != k_cache.shape:
        raise ValueError(f"kv_write: rows are (.., {h}, {d}) but the caches are {tuple(k_cache.shape)} / {tuple(v_cache.shape)}")
    if slots.shape != (n,) or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_write: slots must be int32/int64 ({n},), got {slots.dtype} {tuple(slots.shape)}")
    if k_meta.dtype != v_meta.dtype:
        raise ValueError("kv_write: K and V meta must have the same dtype")


def kv_write_triton(k, v, slots, k_cache, v_cache, k_meta, v_meta, rotate_k: bool = False,
                    rotate_v: bool = False) -> None:
    """Launch the Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    n, h, d = k.shape
    if n == 0:
        return
    # unit-stride head_dim for the row loads; (token, head) strides are free
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    if k_cache.stride() != v_cache.stride() or k_meta.stride() != v_meta.stride():
        raise ValueError("kv_write: K and V caches (and metas) must have the same strides")
    rows = n * h
    block_r = 16 if _INTERPRET else 32
    wrap_triton(_kv_write_kernel)[(triton.cdiv(rows, block_r), 2)](
        k, v, slots.contiguous(), k_cache, v_cache, k_meta, v_meta,
        rows, h, k_cache.shape[2],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        k_meta.stride(0), k_meta.stride(1), k_meta.stride(2),
        HALF=d // 2, BLOCK_R=block_r, ROTATE_K=rotate_k, ROTATE_V=rotate_v,
        DOT=dot_dtype(k.dtype, _INTERPRET), PREC=dot_precision(k.dtype), num_warps=4,
        **pdl_switch.launch_options(k, one_token=n == 1),
    )


@triton_op("atom_ao::kv_write", mutates_args={"k_cache", "v_cache", "k_meta", "v_meta"})
def kv_write(k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             k_meta: torch.Tensor, v_meta: torch.Tensor, rotate_k: bool = False, rotate_v: bool = False) -> None:
    """Quantize K/V rows (tokens, kv_heads, D) to INT4 into ``slots`` of the paged cache, in place.

    ``rotate_k`` / ``rotate_v``: store ``k @ H`` / ``v @ H`` (H: ``atom_ao.kv.format.hadamard``).
    CUDA runs the Triton kernel (one launch for K and V); other devices run the reference."""
    check_write_args(k, v, slots, k_cache, v_cache, k_meta, v_meta)
    if k.is_cuda:
        kv_write_triton(k, v, slots, k_cache, v_cache, k_meta, v_meta, rotate_k, rotate_v)
    else:
        kv_write_ref(hadamard_rows(k) if rotate_k else k, hadamard_rows(v) if rotate_v else v, slots,
                     k_cache, v_cache, k_meta, v_meta)
