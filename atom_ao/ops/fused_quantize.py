"""The fused quantizers ``rmsnorm_quantize`` and ``silu_mul_quantize``: an elementwise producer
(RMSNorm, or SiLU(gate) * up; ``atom_ao.ops.producers``) in front of the Atom activation
quantizer, no intermediate tensor written. Two kernels run them:

* the streaming kernel of ``quantize_activation`` (``launch_streaming``: programs walk their
  rows with the next row block's gathers in flight) for both producers at every size; RMSNorm's
  row statistics are given (the Inductor pass passes the graph's) or written by a small kernel
  first. On the H200 it beat the tile kernel at every size timed, decode included (RMSNorm at
  M = 1, K = 4096: 3.68 us with its two launches vs 4.58; ``explore_quantize.py``);
* this module's tile kernel, one program per (row block, column): asymmetric activations (scale
  and zero point per group, all three quantizers; up to ``RSTD_SPLIT_M`` rows each program sums
  the squares of its rows itself), and SiLU * up when gate and up have different column strides.

The only differences from the reference are the float32 summation order of the mean of
squares and the exp/rsqrt of the device: a rare code flips by one at a rounding boundary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from atom_ao.ops.gemm_tiles import m_bucket
from atom_ao.ops.producers import KIND, PLAIN, RMSNORM, SILU_MUL, _produce_value
from atom_ao.ops.quantize_activation import (
    _INTERPRET, _SMALL_M, _abs_bits, _mul_rn, _round_clamp, _safe_inverse, check_quantize_args, empty_outputs,
    launch_streaming,
)

__all__ = ["PLAIN", "RMSNORM", "SILU_MUL", "check_args", "fused_quantize_triton"]


def _configs(small: bool):
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 4, "GPB": 2}, num_warps=4, num_stages=1)]
    shapes = [(1, 1, 1), (1, 2, 2), (2, 1, 2), (4, 1, 4)] if small else [(4, 1, 4), (8, 1, 4), (8, 2, 8), (16, 1, 8)]
    return [triton.Config({"BLOCK_M": bm, "GPB": gpb}, num_warps=w, num_stages=1) for bm, gpb, w in shapes]


@triton.jit
def _produce(a_ptr, b_ptr, w_ptr, rows, ok_rows, cols, ok_cols, rstd, stride_am, stride_ak, stride_bm, stride_bk,
             MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr, CAST_FIRST: tl.constexpr):
    """The producer's output at (rows, cols) as float32; rows (BLOCK_M,), cols (1, C, J) channel
    indices; masked-off channels give 0 (the reference's zero padding)."""
    r64 = rows.to(tl.int64)[:, None, None]
    c64 = cols.to(tl.int64)
    ok = ok_rows[:, None, None] & ok_cols
    a = tl.load(a_ptr + r64 * stride_am + c64 * stride_ak, mask=ok, other=0.0).to(tl.float32)
    w = 0.0
    b = a
    if MODE == 0:
        w = tl.load(w_ptr + c64, mask=ok_cols, other=0.0).to(tl.float32)
    if MODE == 1:
        b = tl.load(b_ptr + r64 * stride_bm + c64 * stride_bk, mask=ok, other=0.0).to(tl.float32)
    return tl.where(ok_cols, _produce_value(a, b, w, rstd[:, None, None], MODE, X_KIND, OUT_KIND, CAST_FIRST), 0.0)


@triton.jit
def _row_chunk(a_ptr, rows, ok_rows, k0, K, stride_am, stride_ak, BLOCK_K: tl.constexpr):
    # columns [k0, k0 + BLOCK_K) of rows, contiguous; past K and masked-off rows read 0
    ks = k0 + tl.arange(0, BLOCK_K)
    return tl.load(a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :].to(tl.int64) * stride_ak,
                   mask=ok_rows[:, None] & (ks[None, :] < K), other=0.0)


@triton.jit
def _row_rstd(a_ptr, rows, ok_rows, K, stride_am, stride_ak, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # 1 / sqrt(mean(x^2) + eps) per row, float32, IEEE sqrt and division (as torch on CPU)
    acc = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        v = _row_chunk(a_ptr, rows, ok_rows, k0, K, stride_am, stride_ak, BLOCK_K).to(tl.float32)
        acc += v * v
    # tl.cast, not K.to: torch 2.11's write analysis builds the TTIR with K as a Python int, and a
    # failed build makes it count every argument as written (a clone of x before each call)
    mean = tl.math.div_rn(tl.sum(acc, axis=1), tl.cast(K, tl.float32))
    return tl.math.div_rn(tl.full((BLOCK_M,), 1.0, tl.float32), tl.math.sqrt_rn(mean + eps))


@triton.jit
def _row_rstd_kernel(a_ptr, rstd_ptr, M, K, stride_am, stride_ak, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # RMSNorm's per-row statistic alone, for the fused kernel to read (see RSTD_SPLIT_M)
    eps = tl.cast(eps, tl.float32)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_rows = rows < M
    tl.store(rstd_ptr + rows, _row_rstd(a_ptr, rows, ok_rows, K, stride_am, stride_ak, eps, BLOCK_M, BLOCK_K),
             mask=ok_rows)


@triton.jit
def _quantize_column(a_ptr, b_ptr, w_ptr, perm_ptr, q_ptr, s_ptr, qo_ptr, so_ptr, pid_c, n_gb, rows, ok_rows, rstd,
                     K_NORMAL, G, N_OUT, stride_am, stride_ak, stride_bm, stride_bk, stride_qm, stride_sm,
                     stride_sg, stride_qom, clip_ratio, MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                     CAST_FIRST: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_O: tl.constexpr,
                     HAS_OUT: tl.constexpr, PTX: tl.constexpr, GPB: tl.constexpr, ASYM: tl.constexpr):
    # column pid_c of rows: GPB INT4 groups of the permuted normal channels, or (pid_c == n_gb)
    # the INT8 outlier channels
    rows64 = rows.to(tl.int64)
    if pid_c < n_gb:
        # (BLOCK_M, GPB, HALF_P) tiles: low and high half of each group (the pack_int4 layout)
        g = (pid_c * GPB + tl.arange(0, GPB))[None, :, None]
        j = tl.arange(0, HALF_P)[None, None, :]
        pos_lo = g * (2 * HALF) + j
        ok_j = (j < HALF) & (g < G)
        m_lo = (pos_lo < K_NORMAL) & ok_j
        m_hi = (pos_lo + HALF < K_NORMAL) & ok_j
        c_lo = tl.load(perm_ptr + pos_lo, mask=m_lo, other=0)
        c_hi = tl.load(perm_ptr + pos_lo + HALF, mask=m_hi, other=0)
        xl = _produce(a_ptr, b_ptr, w_ptr, rows, ok_rows, c_lo, m_lo, rstd, stride_am, stride_ak, stride_bm,
                      stride_bk, MODE, X_KIND, OUT_KIND, CAST_FIRST)
        xh = _produce(a_ptr, b_ptr, w_ptr, rows, ok_rows, c_hi, m_hi, rstd, stride_am, stride_ak, stride_bm,
                      stride_bk, MODE, X_KIND, OUT_KIND, CAST_FIRST)
        g2 = pid_c * GPB + tl.arange(0, GPB)[None, :]
        if ASYM:
            # x ~ scale * (u - 8) + zero over [clip * min, clip * max] (atom_ao.format); lanes
            # past the half-group (HALF_P > HALF) are no elements, padding channels are zeros
            # (the clipped ends rounded on their own: the reference subtracts them as stored)
            lo = _mul_rn(tl.minimum(tl.min(tl.where(ok_j, xl, float("inf")), axis=2),
                                    tl.min(tl.where(ok_j, xh, float("inf")), axis=2)), clip_ratio, PTX)
            hi = _mul_rn(tl.maximum(tl.max(tl.where(ok_j, xl, float("-inf")), axis=2),
                                    tl.max(tl.where(ok_j, xh, float("-inf")), axis=2)), clip_ratio, PTX)
            nan = tl.maximum(tl.max((xl != xl).to(tl.int32), axis=2), tl.max((xh != xh).to(tl.int32), axis=2))
            scale = tl.where(nan > 0, float("nan"), tl.math.div_rn(hi - lo, 15.0))
            inv = _safe_inverse(scale)[:, :, None]
            ql = _round_clamp((xl - lo[:, :, None]) * inv, 0, 15, PTX) - 8
            qh = _round_clamp((xh - lo[:, :, None]) * inv, 0, 15, PTX) - 8
            tl.store(s_ptr + rows64[:, None] * stride_sm + (G + g2) * stride_sg, lo + scale * 8.0,
                     mask=ok_rows[:, None] & (g2 < G))
        else:
            bits = tl.maximum(tl.max(_abs_bits(xl), axis=2), tl.max(_abs_bits(xh), axis=2))
            amax = bits.to(tl.float32, bitcast=True)  # (BLOCK_M, GPB), NaN if any NaN
            scale = tl.math.div_rn(amax * clip_ratio, 7.0)
            inv = _safe_inverse(scale)[:, :, None]
            ql = _round_clamp(xl * inv, -8, 7, PTX)
            qh = _round_clamp(xh * inv, -8, 7, PTX)
        packed = ((ql & 0xF) | (qh << 4)).to(tl.uint8)
        ok_m = ok_rows[:, None, None]
        tl.store(q_ptr + rows64[:, None, None] * stride_qm + g * HALF + j, packed, mask=ok_m & ok_j)
        tl.store(s_ptr + rows64[:, None] * stride_sm + g2 * stride_sg, scale, mask=ok_rows[:, None] & (g2 < G))
    elif HAS_OUT:
        # names of their own: Triton 3.6 unifies the types of every name assigned in both
        # branches of a run-time if, and this branch's tiles have other shapes
        o = tl.arange(0, BLOCK_O)[None, None, :]
        ok_o = o < N_OUT
        c = tl.load(perm_ptr + K_NORMAL + o, mask=ok_o, other=0)
        v = _produce(a_ptr, b_ptr, w_ptr, rows, ok_rows, c, ok_o, rstd, stride_am, stride_ak, stride_bm,
                     stride_bk, MODE, X_KIND, OUT_KIND, CAST_FIRST)
        bits_o = tl.max(_abs_bits(v), axis=2)  # (BLOCK_M, 1)
        scale_o = tl.math.div_rn(bits_o.to(tl.float32, bitcast=True), 127.0)
        q_o = _round_clamp(v * _safe_inverse(scale_o)[:, :, None], -127, 127, PTX).to(tl.int8)
        tl.store(qo_ptr + rows64[:, None, None] * stride_qom + o, q_o, mask=ok_rows[:, None, None] & ok_o)
        tl.store(so_ptr + rows64[:, None], scale_o, mask=ok_rows[:, None])


@triton.jit
def _fused_quantize_kernel(
    a_ptr, b_ptr, w_ptr, perm_ptr, q_ptr, s_ptr, qo_ptr, so_ptr, rstd_ptr,
    M, K, K_NORMAL, G, N_OUT, M_BUCKET,
    stride_am, stride_ak, stride_bm, stride_bk, stride_qm, stride_sm, stride_qom,
    stride_sg,  # the scales' group stride (row-major [scales | zeros] asymmetric, else group-major)
    eps, clip_ratio,
    MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr, CAST_FIRST: tl.constexpr,
    HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_OUT: tl.constexpr, PTX: tl.constexpr, RSTD_IN: tl.constexpr, BLOCK_M: tl.constexpr, GPB: tl.constexpr,
    ASYM: tl.constexpr,  # asymmetric INT4 groups (scale and zero point, atom_ao.format)
):
    # Inductor types Python float arguments fp64 (eager Triton: fp32): keep the math in fp32
    eps = tl.cast(eps, tl.float32)
    clip_ratio = tl.cast(clip_ratio, tl.float32)
    pid = tl.program_id(0)
    n_gb = tl.cdiv(G, GPB)
    n_cols = n_gb + HAS_OUT
    pid_m = pid // n_cols
    pid_c = pid % n_cols
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ok_rows = rows < M
    if MODE == 0 and RSTD_IN:
        rstd = tl.load(rstd_ptr + rows, mask=ok_rows, other=1.0)
    elif MODE == 0:
        rstd = _row_rstd(a_ptr, rows, ok_rows, K, stride_am, stride_ak, eps, BLOCK_M, BLOCK_K)
    else:
        rstd = tl.zeros((BLOCK_M,), tl.float32)
    _quantize_column(a_ptr, b_ptr, w_ptr, perm_ptr, q_ptr, s_ptr, qo_ptr, so_ptr, pid_c, n_gb, rows, ok_rows,
                     rstd, K_NORMAL, G, N_OUT, stride_am, stride_ak, stride_bm, stride_bk, stride_qm,
                     stride_sm, stride_sg, stride_qom, clip_ratio, MODE, X_KIND, OUT_KIND, CAST_FIRST, HALF, HALF_P,
                     BLOCK_O, HAS_OUT, PTX, GPB, ASYM)


_TUNE_KEY = ["M_BUCKET", "K", "N_OUT", "HALF", "MODE", "RSTD_IN", "ASYM"]
# The tile kernel above this many rows reads RMSNorm's statistic from its own kernel (one
# contiguous pass, M floats) instead of every column program summing its rows again
RSTD_SPLIT_M = _SMALL_M
_RSTD_BLOCK_M = 1 if _INTERPRET else 2
_tuned_small = triton.autotune(configs=_configs(small=True), key=_TUNE_KEY)(_fused_quantize_kernel)
_tuned_large = triton.autotune(configs=_configs(small=False), key=_TUNE_KEY)(_fused_quantize_kernel)
KERNELS = ("stream", "tile")


def _grid(m: int, groups: int, has_out: bool):
    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * (triton.cdiv(groups, meta["GPB"]) + int(has_out)),)

    return grid


def check_args(what: str, x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int) -> None:
    """Clear errors for shapes the quantizer cannot take (shared by both fused ops)."""
    check_quantize_args(what, x, perm, n_outliers, group_size, input_name="input")
    if x.dtype not in KIND:
        raise TypeError(f"{what}: input must be fp16/bf16/fp32, got {x.dtype}")


def default_kernel(mode: int, a, b, asymmetric: bool) -> str:
    """The kernel a fused quantizer takes by default (module docstring)."""
    if asymmetric:
        return "tile"
    if mode == SILU_MUL and b.stride(1) != a.stride(1):  # the streaming gathers share column offsets
        return "tile"
    return "stream"


def _row_rstd_triton(a: torch.Tensor, eps: float, block_k: int) -> torch.Tensor:
    m, k = a.shape
    rstd = torch.empty((m,), dtype=torch.float32, device=a.device)
    wrap_triton(_row_rstd_kernel)[(triton.cdiv(m, _RSTD_BLOCK_M),)](
        a, rstd, m, k, a.stride(0), a.stride(1), float(eps), BLOCK_M=_RSTD_BLOCK_M, BLOCK_K=block_k,
        num_warps=1 if _INTERPRET else 8)
    return rstd


def fused_quantize_triton(mode: int, a, b, w, perm, eps: float, n_outliers: int, group_size: int,
                          clip_ratio: float, cast_first: bool, out_dtype: torch.dtype,
                          kernel: str | None = None, asymmetric: bool = False, rstd: torch.Tensor | None = None):
    """Run a fused quantizer: ``a`` = x (RMSNorm, ``w`` its weight; ``rstd`` its row statistics if
    already computed), gate (SiLU, ``b`` = up) or the activation itself (PLAIN). ``kernel``:
    "stream" or "tile" (module docstring; default ``default_kernel``); the streaming kernel takes
    no asymmetric activations."""
    kernel = default_kernel(mode, a, b, asymmetric) if kernel is None else kernel
    if kernel not in KERNELS:
        raise ValueError(f"fused quantizer: kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "stream" and asymmetric:
        raise ValueError("fused quantizer: the streaming kernel has no asymmetric activations (kernel='tile')")
    m, k = a.shape
    block_k = min(1024, triton.next_power_of_2(k))
    rstd_in = mode == RMSNORM and (m > RSTD_SPLIT_M or kernel == "stream" or rstd is not None)
    if rstd is not None:
        rstd = rstd.reshape(-1).contiguous()
    elif rstd_in and m > 0:
        rstd = _row_rstd_triton(a, eps, block_k)
    if kernel == "stream":
        return launch_streaming(mode, a, b, w, rstd, perm, n_outliers, group_size, clip_ratio, cast_first, out_dtype)
    q, s, qo, so = empty_outputs(a, n_outliers, group_size, asymmetric)
    if m == 0:
        return q, s, qo, so
    groups = s.shape[1] // (2 if asymmetric else 1)
    half = group_size // 2
    b = a if b is None else b
    w = a if w is None else w
    wrap_triton(_tuned_small if m <= _SMALL_M else _tuned_large)[_grid(m, groups, n_outliers > 0)](
        a, b, w, perm.to(device=a.device, dtype=torch.int32).contiguous(), q, s, qo, so, s if rstd is None else rstd,
        m, k, k - n_outliers, groups, n_outliers, m_bucket(m, 4096),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), q.stride(0), s.stride(0), max(qo.stride(0), 1),
        s.stride(1), float(eps), float(clip_ratio),
        MODE=mode, X_KIND=KIND[a.dtype], OUT_KIND=KIND[out_dtype], CAST_FIRST=bool(cast_first),
        HALF=half, HALF_P=triton.next_power_of_2(half),
        BLOCK_O=max(16, triton.next_power_of_2(max(n_outliers, 1))),
        BLOCK_K=block_k,
        HAS_OUT=n_outliers > 0,
        PTX=a.is_cuda and torch.version.hip is None and not _INTERPRET,
        RSTD_IN=rstd_in,
        ASYM=bool(asymmetric),
    )
    return q, s, qo, so
