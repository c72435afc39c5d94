"""``atom_ao::combine_quantize``: flash-decoding's split combine fused with the Atom activation
quantizer of the attention output (o_proj's input).

The decode attention (``kv_decode_attention``) writes per-split partials: ``part`` (B, H, S, D),
each split's unnormalised P.V, and ``ml`` (B, H, S, 2), its running max (base 2) and sum. Its
reduce kernel combines them into the (B, H, D) output, which o_proj's quantizer then reads as
(B, H * D) rows. Here one kernel does both: each program takes one row and one column of the
quantizer (a group of ``group_size`` permuted channels, or the INT8 outlier channels), combines
each of its channels' splits as the reduce kernel does (``out = sum_s w_s acc_s / sum_s w_s l_s``,
``w_s = 2^(m_s - max m)``, empty splits weigh 0, nothing attended gives 0), rounds to the attention
output's dtype, and quantizes exactly as ``quantize_activation``: one launch and one pass less a
decode step, and the (B, H, D) output is never written.

Same values as the two kernels up to the order of the float32 sums over the splits (here a
tree over a (splits, channels) tile, or ``SPLIT_CHUNK`` splits at a time beyond that many; in the
reduce kernel a tree over the head's splits); tests compare with the quantizers' tolerance (codes
within one at rare rounding boundaries). The Inductor pass
(``atom_ao.inductor.combine``) puts it in place of the reduce kernel and the quantizer.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from atom_ao.format import k_normal_padded, quantize_activation_ref
from atom_ao.ops import pdl as pdl_switch
from atom_ao.ops.pdl import wait_then_release  # a bare name: Inductor copies the jit helpers a kernel calls by name
from atom_ao.ops.producers import KIND, _round_to
from atom_ao.ops.quantize_activation import (_LANES_FIRST, _abs_bits, _round_clamp, _safe_inverse, empty_outputs_for,
                                             perm_before_wait)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SPLIT_CHUNK = 32  # splits combined a step: bounds the (splits, channels) tiles' registers
# the tiles' channels along the warps' lanes (``_split_tile``); False: along the splits (session
# 39's form, kept for benchmarks/explore_combine_quantize.py's A/B)
CHANNELS_ON_LANES = True
NUM_WARPS = 4  # a program's warps (the explore script times others)


def combine_splits_ref(part: torch.Tensor, ml: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The decode reduce kernel's combine in plain PyTorch: (B, H, S, D) partials and (B, H, S, 2)
    (max, sum) -> (B, H, D) in ``out_dtype``."""
    m, l_s = ml[..., 0], ml[..., 1]
    m_max = m.amax(-1, keepdim=True)
    m_max = torch.where(m_max == float("-inf"), torch.zeros_like(m_max), m_max)
    w = torch.exp2(m - m_max)
    denom = (w * l_s).sum(-1, keepdim=True)
    o = (part * w[..., None]).sum(-2)
    o = torch.where(denom > 0, o / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(o))
    return o.to(out_dtype)


def combine_quantize_ref(part, ml, perm, n_outliers, group_size, clip_ratio, out_dtype):
    o = combine_splits_ref(part, ml, out_dtype)
    return quantize_activation_ref(o.reshape(o.shape[0], -1), perm, n_outliers, group_size, clip_ratio)


def check_combine_args(part, ml, perm, n_outliers, group_size, out_dtype) -> None:
    if part.dim() != 4 or part.dtype != torch.float32:
        raise ValueError(f"combine_quantize: part must be float32 (batch, heads, splits, head_dim), got "
                         f"{part.dtype} {tuple(part.shape)}")
    if ml.shape != (*part.shape[:3], 2) or ml.dtype != torch.float32:
        raise ValueError(f"combine_quantize: ml must be float32 {(*part.shape[:3], 2)} (max, sum of each split), "
                         f"got {ml.dtype} {tuple(ml.shape)}")
    if ml.device != part.device or perm.device != part.device:
        raise ValueError(f"combine_quantize: part ({part.device}), ml ({ml.device}) and perm ({perm.device}) "
                         "must be on one device")
    k = part.shape[1] * part.shape[3]
    if perm.shape != (k,):
        raise ValueError(f"combine_quantize: perm has shape {tuple(perm.shape)}, expected ({k},) = heads x head_dim")
    if group_size <= 0 or group_size % 2 or not 0 <= n_outliers < k:
        raise ValueError(f"combine_quantize: bad group_size={group_size} / n_outliers={n_outliers} for K={k}")
    if out_dtype not in KIND:
        raise TypeError(f"combine_quantize: out_dtype must be fp16/bf16/fp32, got {out_dtype}")


@triton.jit
def _split_tile(c, ok, s0, S, CHUNK: tl.constexpr, CH_FIRST: tl.constexpr):
    """Index parts of a (channels, splits) tile (CH_FIRST) or a (splits, channels) one: the
    channels cc, the splits sp and the mask, each broadcastable to it. The gathers have no
    provable contiguity, so Triton lays the tile out by dimension index, its lanes along the
    first dimension before 3.9 and along the last from 3.9 on (``_LANES_FIRST``); the channels go
    where the lanes are, so a warp reads consecutive channels of one split. (With the lanes
    along the splits, each lane read its own 32-byte sector: ~20 us a launch at batch 1 on the
    H200, session 40, against ~7 for the reduce kernel and quantizer it replaces.)"""
    s = s0 + tl.arange(0, CHUNK)
    if CH_FIRST:
        cc = c[:, None]
        okc = ok[:, None]
        sp = s[None, :]
    else:
        cc = c[None, :]
        okc = ok[None, :]
        sp = s[:, None]
    return cc, sp, okc & (sp < S)


@triton.jit
def _combined(part_ptr, ml_ptr, row, c, ok, S, stride_pb, stride_mb,
              D: tl.constexpr, CHUNK: tl.constexpr, ONE_CHUNK: tl.constexpr, OUT_KIND: tl.constexpr,
              CH_FIRST: tl.constexpr):
    """The combined attention output at channels c (1-D; ok masks them) of one row, rounded to
    the output dtype: channel c is head c // D, dim c % D. Up to CHUNK splits (ONE_CHUNK) one
    pass, every load issued at once; more: two passes, CHUNK at a time, the max and then the
    weighted sums. The reductions run over the tile's split axis (``_split_tile``)."""
    AX: tl.constexpr = 1 if CH_FIRST else 0
    cc, sp, okc = _split_tile(c, ok, 0, S, CHUNK, CH_FIRST)
    h = cc // D
    m_row = ml_ptr + row.to(tl.int64) * stride_mb + h * (S * 2)
    p_row = part_ptr + row.to(tl.int64) * stride_pb + h * (S * D) + (cc - h * D)
    if ONE_CHUNK:
        m = tl.load(m_row + sp * 2, mask=okc, other=float("-inf"))
        l_s = tl.load(m_row + sp * 2 + 1, mask=okc, other=0.0)
        acc = tl.load(p_row + sp * D, mask=okc, other=0.0)
        m_max = tl.max(m, axis=AX)
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.exp2(m - tl.expand_dims(m_max, AX))
        denom = tl.sum(w * l_s, axis=AX)
        o = tl.sum(acc * w, axis=AX)
    else:
        m_max = tl.max(tl.full(cc.shape, float("-inf"), tl.float32), axis=AX)  # (the reductions' layout)
        for s0 in range(0, S, CHUNK):
            _, sp, okc = _split_tile(c, ok, s0, S, CHUNK, CH_FIRST)
            m = tl.load(m_row + sp * 2, mask=okc, other=float("-inf"))
            m_max = tl.maximum(m_max, tl.max(m, axis=AX))
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
        denom = tl.zeros_like(m_max)
        o = tl.zeros_like(m_max)
        for s0 in range(0, S, CHUNK):
            _, sp, okc = _split_tile(c, ok, s0, S, CHUNK, CH_FIRST)
            m = tl.load(m_row + sp * 2, mask=okc, other=float("-inf"))
            l_s = tl.load(m_row + sp * 2 + 1, mask=okc, other=0.0)
            w = tl.exp2(m - tl.expand_dims(m_max, AX))
            denom += tl.sum(w * l_s, axis=AX)
            acc = tl.load(p_row + sp * D, mask=okc, other=0.0)
            o += tl.sum(acc * w, axis=AX)
    o = tl.where(denom > 0, o / tl.where(denom > 0, denom, 1.0), 0.0)
    return tl.where(ok, _round_to(o, OUT_KIND), 0.0)


@triton.jit
def _combine_quantize_kernel(
    part_ptr, ml_ptr, perm_ptr, q_ptr, s_ptr, qo_ptr, so_ptr,
    K_NORMAL, G, N_OUT, S,  # normal (padded-out) channels, groups, outlier channels, splits
    stride_pb, stride_mb, stride_qm, stride_sm, stride_sg, stride_qom,
    clip_ratio,
    D: tl.constexpr,  # head_dim
    HALF: tl.constexpr,  # group_size // 2
    HALF_P: tl.constexpr,  # HALF rounded up to a power of two
    BLOCK_O: tl.constexpr,  # outlier channels, rounded up to a power of two
    CHUNK: tl.constexpr,  # splits a step (SPLIT_CHUNK, at most the splits rounded up)
    ONE_CHUNK: tl.constexpr,  # all splits in one step (S <= CHUNK): one pass
    OUT_KIND: tl.constexpr,  # the attention output's dtype (producers.KIND)
    CH_FIRST: tl.constexpr,  # tiles (channels, splits), else (splits, channels): see _split_tile
    PTX: tl.constexpr,  # compiled for NVIDIA (the interpreter runs the portable rounding)
    PDL: tl.constexpr,  # launched with programmatic dependent launch
    PERM_FIRST: tl.constexpr,  # with PDL: perm loaded before the wait (quantize_activation.perm_before_wait)
):
    """Program (row, column): column g < G quantizes group g of the permuted normal channels to
    INT4 (the ``quantize_activation`` kernel's math and layout), column G the outliers to INT8."""
    if not PERM_FIRST:
        wait_then_release(PDL)  # before any load or store
    row = tl.program_id(0)
    col = tl.program_id(1)
    clip_ratio = tl.cast(clip_ratio, tl.float32)  # Inductor passes Python floats as fp64
    if col < G:
        j = tl.arange(0, HALF_P)
        pos_lo = col * (2 * HALF) + j
        ok_j = j < HALF
        m_lo = (pos_lo < K_NORMAL) & ok_j  # padding positions are 0, as the reference pads
        m_hi = (pos_lo + HALF < K_NORMAL) & ok_j
        c_lo = tl.load(perm_ptr + pos_lo, mask=m_lo, other=0)
        c_hi = tl.load(perm_ptr + pos_lo + HALF, mask=m_hi, other=0)
        if PERM_FIRST:  # perm is on its way: now wait for the split kernel's partials
            wait_then_release(PDL)
        xl = _combined(part_ptr, ml_ptr, row, c_lo, m_lo, S, stride_pb, stride_mb, D, CHUNK,
                       ONE_CHUNK, OUT_KIND, CH_FIRST)
        xh = _combined(part_ptr, ml_ptr, row, c_hi, m_hi, S, stride_pb, stride_mb, D, CHUNK,
                       ONE_CHUNK, OUT_KIND, CH_FIRST)
        amax = tl.maximum(tl.max(_abs_bits(xl), axis=0), tl.max(_abs_bits(xh), axis=0)).to(tl.float32,
                                                                                             bitcast=True)
        scale = tl.math.div_rn(amax * clip_ratio, 7.0)
        inv = _safe_inverse(scale)
        ql = _round_clamp(xl * inv, -8, 7, PTX)
        qh = _round_clamp(xh * inv, -8, 7, PTX)
        packed = ((ql & 0xF) | (qh << 4)).to(tl.uint8)
        tl.store(q_ptr + row.to(tl.int64) * stride_qm + col * HALF + j, packed, mask=ok_j)
        tl.store(s_ptr + row.to(tl.int64) * stride_sm + col * stride_sg, scale)
    else:
        o = tl.arange(0, BLOCK_O)
        ok_o = o < N_OUT
        c = tl.load(perm_ptr + K_NORMAL + o, mask=ok_o, other=0)
        if PERM_FIRST:
            wait_then_release(PDL)
        v = _combined(part_ptr, ml_ptr, row, c, ok_o, S, stride_pb, stride_mb, D, CHUNK, ONE_CHUNK, OUT_KIND,
                      CH_FIRST)
        scale = tl.math.div_rn(tl.max(_abs_bits(v), axis=0).to(tl.float32, bitcast=True), 127.0)
        q = _round_clamp(v * _safe_inverse(scale), -127, 127, PTX).to(tl.int8)
        tl.store(qo_ptr + row.to(tl.int64) * stride_qom + o, q, mask=ok_o)
        tl.store(so_ptr + row, scale)


def combine_quantize_triton(part, ml, perm, n_outliers, group_size, clip_ratio, out_dtype, pdl=None):
    """Launch the Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1)."""
    check_combine_args(part, ml, perm, n_outliers, group_size, out_dtype)
    b, h, splits, d = part.shape
    k = h * d
    q, s, qo, so = empty_outputs_for(b, k, part.device, n_outliers, group_size)
    if b == 0:
        return q, s, qo, so
    part, ml = part.contiguous(), ml.contiguous()
    reads_perm_early = perm_before_wait(perm, part.device)
    perm = perm.to(torch.int32).contiguous()
    groups = k_normal_padded(k, n_outliers, group_size) // group_size
    half = group_size // 2
    opts = pdl_switch.launch_options(part, pdl, one_token=b == 1)
    grid = (b, groups + int(n_outliers > 0))
    wrap_triton(_combine_quantize_kernel)[grid](
        part, ml, perm, q, s, qo, so,
        k - n_outliers, groups, n_outliers, splits,
        part.stride(0), ml.stride(0), q.stride(0), s.stride(0), s.stride(1), max(qo.stride(0), 1),
        float(clip_ratio),
        D=d, HALF=half, HALF_P=triton.next_power_of_2(half),
        BLOCK_O=max(16, triton.next_power_of_2(max(n_outliers, 1))),
        CHUNK=min(SPLIT_CHUNK, triton.next_power_of_2(splits)), ONE_CHUNK=splits <= SPLIT_CHUNK,
        OUT_KIND=KIND[out_dtype], CH_FIRST=_LANES_FIRST if CHANNELS_ON_LANES else not _LANES_FIRST,
        PTX=part.is_cuda and torch.version.hip is None and not _INTERPRET,
        num_warps=NUM_WARPS, **opts, PERM_FIRST=bool(opts["PDL"] and reads_perm_early),
    )
    return q, s, qo, so


@triton_op("atom_ao::combine_quantize", mutates_args=())
def combine_quantize(
    part: torch.Tensor, ml: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode-attention partials (B, H, S, D) and their (B, H, S, 2) max / sum -> the four outputs of
    ``quantize_activation`` of the combined (B, H * D) attention output in ``out_dtype``.

    CUDA runs the Triton kernel; other devices run the reference."""
    if part.is_cuda:
        return combine_quantize_triton(part, ml, perm, n_outliers, group_size, clip_ratio, out_dtype)
    check_combine_args(part, ml, perm, n_outliers, group_size, out_dtype)
    return combine_quantize_ref(part, ml, perm, n_outliers, group_size, clip_ratio, out_dtype)
