"""Triton pieces shared by the INT4 KV attention kernels (decode and prefill).

Scores and values are never dequantized element by element. With a K row stored as codes
``c`` (0..15), scale ``s`` and zero ``z`` (``atom_ao.kv.format``), and a query ``q``:

    q . k  =  s * (q . c)  +  z * sum(q)

so a tile's scores are two tensor-core half-dots over the raw codes (exact in bf16/fp16: small
integers), one multiply by the per-token scale and one rank-1 correction. Likewise the value
side: ``sum_t p_t v_t = (p * s_v) @ c_v + sum_t (p_t z_v,t)``. The codes come out of a byte tile
as ``b & 15`` (first half of head_dim) and ``b >> 4`` (second half).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


F32_MAGIC = tl.constexpr(0x4B000000)  # the bits of 2.0**23 in float32
# MAGIC | BY_PAIRS: the 16-bit trick by inline asm, two codes per instruction (see ``_PAIRS``)
BY_PAIRS = tl.constexpr(1 << 16)
# the launchers' default (``magic_bits``); the one-warp GQA decode path always takes the pairs
# (H200, session 12: 5% faster there; the GPU tests run both)
UNPACK_BY_PAIRS = False


def _pairs_asm(magic16: int, one16: int) -> str:
    """4 packed bytes -> 4 low codes and 4 high codes as fp16 / bf16 pairs: spread bytes 0, 1 (and
    2, 3) into the two 16-bit halves of a word (PRMT), OR each nibble into the mantissa of the
    magic number (LOP3; the high nibbles after one shift), subtract the magic from both halves at
    once (FMA x2: x * 1 - magic). 12 instructions for 8 codes, where Triton's per-element code
    takes ~3.8 per code."""
    magic, one = magic16 * 0x10001, one16 * 0x10001
    neg = (magic16 | 0x8000) * 0x10001
    fma = "fma.rn.bf16x2" if magic16 == 0x4300 else "fma.rn.f16x2"
    # one line: Inductor copies module constants into a triple-quoted kernel source, where a "\n"
    # escape inside this string would become a real line break (tests/ops/test_kernel_signatures.py)
    return " ".join((
        "{ .reg .b32 t0, t1, u0, u1, one, neg;",
        f"mov.b32 one, {one:#x};",
        f"mov.b32 neg, {neg:#x};",
        "prmt.b32 t0, $4, 0, 0x4140;",
        "prmt.b32 t1, $4, 0, 0x4342;",
        f"lop3.b32 $0, t0, 0x000F000F, {magic:#x}, 0xEA;",
        f"lop3.b32 $1, t1, 0x000F000F, {magic:#x}, 0xEA;",
        "shr.u32 u0, t0, 4;",
        "shr.u32 u1, t1, 4;",
        f"lop3.b32 $2, u0, 0x000F000F, {magic:#x}, 0xEA;",
        f"lop3.b32 $3, u1, 0x000F000F, {magic:#x}, 0xEA;",
        f"{fma} $0, $0, one, neg;",
        f"{fma} $1, $1, one, neg;",
        f"{fma} $2, $2, one, neg;",
        f"{fma} $3, $3, one, neg; }}",
    ))


_PAIRS_BF16 = tl.constexpr(_pairs_asm(0x4300, 0x3F80))
_PAIRS_F16 = tl.constexpr(_pairs_asm(0x6400, 0x3C00))


@triton.jit
def sylvester_sign_is_negative(i, j):
    """Where entry (i, j) of the +-1 Sylvester-Hadamard matrix is -1: i & j has an odd number of set
    bits (indices below 256: three folds of the bits find the parity). The KV cache's Hadamard
    rotation (``kv_write``, the decode's combining kernel) builds the matrix from this, none in memory."""
    x = i & j
    x = x ^ (x >> 4)
    x = x ^ (x >> 2)
    x = x ^ (x >> 1)
    return (x & 1) == 1


@triton.jit
def sylvester_signs(HALF: tl.constexpr, DOT: tl.constexpr):
    """The (HALF, HALF) +-1 Sylvester-Hadamard matrix in DOT, made in registers."""
    d = tl.arange(0, HALF)
    return tl.where(sylvester_sign_is_negative(d[:, None], d[None, :]), -1.0, 1.0).to(DOT)


@triton.jit
def sylvester_halves(lo, hi, HALF: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """(lo, hi) halves of rows x -> the halves of x @ S_D in float32, S_D the +-1 Sylvester matrix of
    D = 2 HALF: S_D = [[S, S], [S, -S]], so x @ S_D = [x_lo S + x_hi S, x_lo S - x_hi S], two dots
    (16-bit values times +-1: exact products, float32 sums). ``x @ H`` is this over sqrt(D)."""
    s = sylvester_signs(HALF, DOT)
    p = tl.dot(lo.to(DOT), s, input_precision=PREC)
    q = tl.dot(hi.to(DOT), s, input_precision=PREC)
    return p + q, p - q


@triton.jit
def load_raw(c_ptr, m_ptr, row_c, row_m, ok, s_mw, HALF: tl.constexpr):
    """(BLOCK_N,) row offsets -> the packed byte tile (BLOCK_N, HALF) uint8, scale and zero
    (BLOCK_N,) float32. Masked rows read byte 0, scale 0, zero 0 (they are masked later)."""
    cols = tl.arange(0, HALF)
    b = tl.load(c_ptr + row_c[:, None] + cols[None, :], mask=ok[:, None], other=0)
    scale = tl.load(m_ptr + row_m, mask=ok, other=0.0).to(tl.float32)
    zero = tl.load(m_ptr + row_m + s_mw, mask=ok, other=0.0).to(tl.float32)
    return b, scale, zero


@triton.jit
def unpack_codes(b, DOT: tl.constexpr, MAGIC: tl.constexpr):
    """A packed byte tile -> (low codes, high codes) in DOT.

    MAGIC (``magic_bits``): the 16-bit pattern of 1024.0 (fp16) or 128.0 (bf16), or F32_MAGIC
    (the 32-bit pattern of 2**23, float32 codes for the CUDA-core path). A code c OR'ed into its
    mantissa is exactly that number + c, and one exact subtraction leaves c: and, or, subtract,
    all full-rate, where an int -> float conversion runs at a quarter of the rate. MAGIC = 0:
    through an int -> float32 cast (float32 operands, and the interpreter, which cannot cast
    integers to bf16)."""
    # one if / elif / else with a single return: Triton compiles the code after an early
    # return inside a compile-time branch too
    if MAGIC == F32_MAGIC:
        b32 = b.to(tl.int32)
        lo = ((b32 & 15) | F32_MAGIC).to(tl.float32, bitcast=True) - 8388608.0
        hi = ((b32 >> 4) | F32_MAGIC).to(tl.float32, bitcast=True) - 8388608.0
    elif MAGIC >= BY_PAIRS:
        if MAGIC == BY_PAIRS | 0x4300:
            lo, hi = tl.inline_asm_elementwise(_PAIRS_BF16, "=r,=r,=r,=r,r", [b], dtype=(tl.bfloat16, tl.bfloat16),
                                               is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(_PAIRS_F16, "=r,=r,=r,=r,r", [b], dtype=(tl.float16, tl.float16),
                                               is_pure=True, pack=4)
    elif MAGIC != 0:
        # scalar constants, not a broadcast tensor: then Triton moves the byte tile (not the
        # unpacked 16-bit tiles) into the dot operand layout and unpacks there, skipping a
        # shared-memory round trip of two bf16 tiles per tile of codes
        if MAGIC == 0x4300:
            value: tl.constexpr = 128.0
        else:
            value: tl.constexpr = 1024.0
        lo = (((b & 15).to(tl.int16) | MAGIC).to(DOT, bitcast=True) - value).to(DOT)
        hi = (((b >> 4).to(tl.int16) | MAGIC).to(DOT, bitcast=True) - value).to(DOT)
    else:
        lo = (b & 15).to(tl.float32).to(DOT)
        hi = (b >> 4).to(tl.float32).to(DOT)
    return lo, hi


@triton.jit
def load_codes(c_ptr, m_ptr, row_c, row_m, ok, s_mw, HALF: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr):
    """``load_raw`` then ``unpack_codes``: (low codes, high codes) (BLOCK_N, HALF) in DOT, scale, zero."""
    b, scale, zero = load_raw(c_ptr, m_ptr, row_c, row_m, ok, s_mw, HALF)
    lo, hi = unpack_codes(b, DOT, MAGIC)
    return lo, hi, scale, zero


@triton.jit
def split_tiles(len_ptr, start_ptr, b, sp, num_splits, HAS_START: tl.constexpr, BLOCK: tl.constexpr):
    """Flash-decoding's share of sequence b for split sp: -> (seq_len, start, tile_lo, tile_hi),
    the sequence's tiles of BLOCK tokens [tile_lo, tile_hi) this program reads. Each sequence
    divides its own length among the splits; tiles wholly inside the left padding (before
    ``start``) are skipped."""
    seq_len = tl.load(len_ptr + b)
    if HAS_START:
        start = tl.load(start_ptr + b)
    else:
        start = 0
    per = tl.cdiv(tl.cdiv(seq_len, BLOCK), num_splits)
    tile_lo = tl.maximum(sp * per, start // BLOCK)
    tile_hi = tl.minimum(tl.cdiv(seq_len, BLOCK), (sp + 1) * per)
    return seq_len, start, tile_lo, tile_hi


@triton.jit
def paged_rows(bt_ptr, n0, ok, s_cp, s_ch, s_ct, s_mp, s_mh, hk, PAGE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tile of token positions n0 + [0, BLOCK_N) (n0 a multiple of BLOCK_N) of one sequence
    (``bt_ptr``: its block-table row) and KV head hk -> int64 offsets of their cache rows and of
    their scales. When a tile lies inside one page (PAGE % BLOCK_N == 0) the page is one scalar
    lookup and the offsets are provably contiguous (vector loads of the scales)."""
    if PAGE % BLOCK_N == 0:
        page = tl.load(bt_ptr + n0 // PAGE).to(tl.int64)
        off = n0 % PAGE + tl.arange(0, BLOCK_N)
    else:
        t = n0 + tl.arange(0, BLOCK_N)
        page = tl.load(bt_ptr + t // PAGE, mask=ok, other=0).to(tl.int64)
        off = t % PAGE
    return page * s_cp + hk * s_ch + off * s_ct, page * s_mp + hk * s_mh + off


@triton.jit
def half_dots(q_lo, q_hi, k_lo, k_hi, PREC: tl.constexpr):
    """(M, HALF) and (BLOCK_N, HALF) halves of queries and keys (DOT) -> (M, BLOCK_N) float32 q . k."""
    s = tl.dot(q_lo, tl.trans(k_lo), input_precision=PREC)
    return tl.dot(q_hi, tl.trans(k_hi), s, input_precision=PREC)


@triton.jit
def int4_scores(q_lo, q_hi, q_sum, c_lo, c_hi, scale, zero, PREC: tl.constexpr):
    """(M, HALF) query halves (DOT), (M,) float32 row sums -> (M, BLOCK_N) float32 q . k."""
    raw = half_dots(q_lo, q_hi, c_lo, c_hi, PREC)
    return raw * scale[None, :] + q_sum[:, None] * zero[None, :]


@triton.jit
def int4_pv(p, acc_lo, acc_hi, c_lo, c_hi, scale, zero, PREC: tl.constexpr):
    """acc += p @ V for a tile of INT4 values: p (M, BLOCK_N) float32."""
    pv = (p * scale[None, :]).to(c_lo.dtype)
    acc_lo = tl.dot(pv, c_lo, acc_lo, input_precision=PREC)
    acc_hi = tl.dot(pv, c_hi, acc_hi, input_precision=PREC)
    pz = tl.sum(p * zero[None, :], axis=1)
    return acc_lo + pz[:, None], acc_hi + pz[:, None]


@triton.jit
def fma_scores(q_lo, q_hi, q_sum, c_lo, c_hi, scale, zero):
    """``int4_scores`` on the CUDA cores: (M, HALF) float32 query halves, M small (1 or 2
    query heads per KV head), where a tensor-core tile would be 15/16 padding and the codes
    would take a shared-memory round trip to reach the dot operand layout."""
    raw = tl.sum(q_lo[:, None, :] * c_lo[None, :, :] + q_hi[:, None, :] * c_hi[None, :, :], axis=2)
    return raw * scale[None, :] + q_sum[:, None] * zero[None, :]


@triton.jit
def fma_pv(p, acc_lo, acc_hi, c_lo, c_hi, scale, zero):
    """``int4_pv`` on the CUDA cores (see ``fma_scores``)."""
    pv = (p * scale[None, :])[:, :, None]
    pz = tl.sum(p * zero[None, :], axis=1)
    acc_lo += tl.sum(pv * c_lo[None, :, :], axis=1) + pz[:, None]
    acc_hi += tl.sum(pv * c_hi[None, :, :], axis=1) + pz[:, None]
    return acc_lo, acc_hi


@triton.jit
def online_softmax(s, m_i, l_i, AXIS: tl.constexpr = 1):
    """One step of the streaming softmax in base 2: s (M, BLOCK_N) log2-scaled scores, masked
    entries -inf (AXIS = 0: s is (BLOCK_N, M), the tokens along dimension 0). Returns (p, alpha,
    m_new, l_new); a row that has seen no key keeps m = -inf and gets p = 0 (never
    exp(-inf - -inf) = NaN)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=AXIS))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - tl.expand_dims(m_use, AXIS))
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=AXIS)


@triton.jit
def load_kv_meta(km_ptr, vm_ptr, row_m, ok, s_mw):
    """K and V scales and zeros (float32, the shape of row_m) at the metadata offsets row_m
    (``paged_rows``); masked rows read 0."""
    ks = tl.load(km_ptr + row_m, mask=ok, other=0.0).to(tl.float32)
    kz = tl.load(km_ptr + row_m + s_mw, mask=ok, other=0.0).to(tl.float32)
    vs = tl.load(vm_ptr + row_m, mask=ok, other=0.0).to(tl.float32)
    vz = tl.load(vm_ptr + row_m + s_mw, mask=ok, other=0.0).to(tl.float32)
    return ks, kz, vs, vz


_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def magic_bits(dtype: torch.dtype, interpret: bool, pairs: bool | None = None) -> int:
    """``load_codes``' MAGIC for queries of ``dtype``: the mantissa trick for fp16 / bf16 on the
    GPU (1024.0 = 0x6400 in fp16, 128.0 = 0x4300 in bf16: their last mantissa bit is worth 1),
    with BY_PAIRS set when ``pairs`` (None: ``UNPACK_BY_PAIRS``); 0 (casts) for float32 and the
    interpreter."""
    if interpret:
        return 0
    magic = {torch.float16: 0x6400, torch.bfloat16: 0x4300}.get(dtype, 0)
    pairs = UNPACK_BY_PAIRS if pairs is None else pairs
    return magic | BY_PAIRS.value if magic and pairs else magic


def operand_dtype(dtype: torch.dtype, rope: bool) -> torch.dtype:
    """The type the kernels' dots work in for queries of ``dtype``: their own, except bf16 against
    keys cached before RoPE, which run in fp16. There the dot operand is the dequantized key plus
    the K bias, rotated; with a Qwen-like bias entry (~150) bf16 keeps ~1.0 of resolution around
    it (2.4% output error on the GPU test's case), fp16 ~0.06 (0.3%). The codes (0..15) and the
    queries fit fp16 exactly or to its precision."""
    return torch.float16 if rope and dtype == torch.bfloat16 else dtype


def dot_dtype(dtype: torch.dtype, interpret: bool):
    """Operand type of the kernels' dots for queries of ``dtype``: the query's own type on the
    GPU; float32 under the interpreter, whose dot multiplies the raw bits of bf16 values."""
    return tl.float32 if interpret else _TL[dtype]


def dot_precision(dtype) -> str:
    """``input_precision`` of the kernels' dots for operands of ``dtype``: float32 operands get
    IEEE products (Triton's default for them, tf32, keeps ~3 decimal digits); the setting does
    nothing for bf16 / fp16, which keep the default."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def rope_keys(c_lo, c_hi, scale, zero, t, ok, rope_ptr, sin_off, kb_ptr, HAS_KBIAS: tl.constexpr,
              HALF: tl.constexpr, DOT: tl.constexpr):
    """Keys cached before RoPE (``atom_ao.kv.rope``): codes -> float keys as attention uses them.
    Dequantize (s * c + z), add the K bias back, rotate by the slot ``t`` (BLOCK_N,): the packed
    halves are exactly RoPE's channel pairs (i, i + D/2), so the rotation is elementwise on the two
    half tiles. The cos / sin rows come from the (2, positions, HALF) float32 table, ``sin_off``
    apart. -> (k_lo, k_hi) (BLOCK_N, HALF) in DOT."""
    d = tl.arange(0, HALF)
    x_lo = c_lo.to(tl.float32) * scale[:, None] + zero[:, None]
    x_hi = c_hi.to(tl.float32) * scale[:, None] + zero[:, None]
    if HAS_KBIAS:
        x_lo += tl.load(kb_ptr + d)[None, :]
        x_hi += tl.load(kb_ptr + HALF + d)[None, :]
    rows = rope_ptr + t[:, None] * HALF + d[None, :]
    cos = tl.load(rows, mask=ok[:, None], other=0.0)
    sin = tl.load(rows + sin_off, mask=ok[:, None], other=0.0)
    return (x_lo * cos - x_hi * sin).to(DOT), (x_hi * cos + x_lo * sin).to(DOT)
