"""``atom_ao::w4a4_gemm``: packed INT4 x INT4 over normal groups plus the INT8 outlier block.

Hopper has no INT4 tensor cores, so the kernel unpacks INT4 to INT8 in registers and runs the
INT8 tensor cores. Thanks to the packed layout (byte j of a group = element j | element
j + gs/2), each group is two INT8 dots over half-groups, whose INT32 sums are exact; the
group's FP32 scales are applied to that INT32 partial sum. The INT8 outlier block is the last
K step, with its own per-row / per-token scales. One kernel, optional bias, fp16/bf16/fp32 out.
M = 1 has its own dp4a kernel (``w4a4_gemv``), 2..64 tokens the swap-AB kernel
(``w4a4_gemm_swap``); from M = UNPACKED_MIN_M on, ``w4a4_gemm_unpacked`` unpacks both operands
to INT8 in memory first.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from atom_ao.format import w4a4_gemm_ref
from atom_ao.ops.gemm_tiles import (
    MAX_GROUP_SIZE, SCALE_256, add_outlier_block, group_sum_x256_to_f32, grouped_tile, m_bucket, no_empty_split,
    outlier_block, split_share, splits_fit, unpack_int4_x16,
)
from atom_ao.ops import w4a4_gemm_swap as swap_module  # OUT_SHARE read at each call
from atom_ao.ops.w4a4_gemm_swap import FULL_M, FULL_N, SWAP_MAX_M, swap_kernel_and_meta, swap_split_k
from atom_ao.ops.w4a4_gemv import gemv_split_k, launch_gemv
from atom_ao.ops.w4a4_gemm_unpacked import w4a4_gemm_unpacked

# the swap kernel's unmasked main loop when every tile is full (``EVEN_N`` / ``EVEN_M``); False
# masks every load (benchmarks/explore_decode_gemm.py --masked-ab times both)
SWAP_UNMASKED = True


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _interpreter_meta(m: int) -> dict:
    # the CPU interpreter cannot autotune (no driver): small tiles, and both loop forms covered
    return {"BLOCK_M": 16 if m <= 16 else 32, "BLOCK_N": 32, "GROUP_M": 4, "PREFETCH": m <= 32}


# (BLOCK_M, BLOCK_N, warps, stages, prefetch) per M regime. One autotuner per regime instead of
# ``prune_configs_by``: torch's ``wrap_triton`` rebuilds a pruned autotuner on every eager call,
# which would retune the kernel every time.
_GEMM_REGIMES = {
    # up to 64 rows: weights still dominate. Either the next group's tiles prefetched in registers
    # (PREFETCH; the shifts between load and dot keep Triton's pipeliner off these loads) or the
    # pipeliner with 4 stages; split-K (_split_k) adds programs along K
    32: [(16, 64, 4, 3, True), (32, 64, 4, 3, True), (16, 64, 4, 4, False), (32, 128, 4, 3, False)],
    # 33..64 rows: also one 64-row tile (one unpack of each weight tile for all rows; H100, M=64:
    # 4096->12288 35.4 -> 28.8 us, 11008->4096 28.6 -> 24.9 us). Not offered below 33 rows: the
    # run that offered it measured 28 us at M=16 on 4096->12288, 17.5 us in the run without it.
    64: [(16, 64, 4, 3, True), (32, 64, 4, 3, True), (16, 64, 4, 4, False), (32, 128, 4, 3, False),
         (64, 64, 4, 3, False)],
    512: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (128, 128, 8, 3, False)],
    # prefill: compute-bound, big tiles
    # (128x256 on 8 warps spilled ~1.1-1.9 KB in its main loop, sm_90a ptxas: gone)
    1 << 62: [(64, 128, 4, 3, False), (128, 128, 8, 3, False)],
}


def _configs(regime):
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8, "PREFETCH": pf}, num_warps=w, num_stages=st)
        for bm, bn, w, st, pf in _GEMM_REGIMES[regime]
    ]


@triton.jit
def _group_partial(a, w, sa, sw, acc, HALF: tl.constexpr, USE_ASM: tl.constexpr):
    """acc += (INT32 dot of one group) * its token scales * its weight-row scales. The codes come
    as 16 x code (``unpack_int4_x16``): the dot is 256x, the token scales 1/256x, exact."""
    a_lo, a_hi = unpack_int4_x16(a, USE_ASM)
    w_lo, w_hi = unpack_int4_x16(w, USE_ASM)
    dot = tl.dot(a_lo, w_lo, out_dtype=tl.int32)
    dot = tl.dot(a_hi, w_hi, dot, out_dtype=tl.int32)
    return acc + group_sum_x256_to_f32(dot, HALF) * (sa * SCALE_256)[:, None] * sw[None, :]


@triton.jit
def _w4a4_gemm_kernel_jit(
    a_ptr, as_ptr, ao_ptr, aos_ptr,
    w_ptr, ws_ptr, wo_ptr, wos_ptr,
    bias_ptr, out_ptr,
    M, N, G, N_OUT, M_BUCKET, SPLITS,
    stride_am, stride_asm, stride_aom,
    stride_wn, stride_wsn, stride_won,
    stride_om,
    stride_asg, stride_wsg,  # the scales' group strides (token scales: group-major, see empty_outputs)
    HALF: tl.constexpr,  # group_size // 2: bytes per group and row
    BLOCK_O: tl.constexpr,  # outlier channels per dot
    HAS_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_ASM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH: tl.constexpr,
):
    # grouped tile order: neighbouring programs share weight tiles in L2
    pid = tl.program_id(0)
    split = tl.program_id(1)  # split-K: this program's share of the groups (see _split_k)
    g0, n_g = split_share(G, SPLITS, split)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, HALF)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] + g0 * HALF
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] + g0 * HALF  # (HALF, BLOCK_N): W^T tile

    as_ptrs = as_ptr + offs_m * stride_asm + g0 * stride_asg
    ws_ptrs = ws_ptr + offs_n * stride_wsn + g0 * stride_wsg
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        # register double-buffering: group g+1's tiles are in flight while group g computes
        a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
        w = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
        sa = tl.load(as_ptrs, mask=mask_m, other=0.0)
        sw = tl.load(ws_ptrs, mask=mask_n, other=0.0)
        for g in range(1, n_g + 1):
            more_m = mask_m & (offs_m * 0 + g < n_g)  # tensor-shaped: the interpreter wants it
            more_n = mask_n & (offs_n * 0 + g < n_g)
            a_next = tl.load(a_ptrs + g * HALF, mask=more_m[:, None], other=0)
            w_next = tl.load(w_ptrs + g * HALF, mask=more_n[None, :], other=0)
            sa_next = tl.load(as_ptrs + g * stride_asg, mask=more_m, other=0.0)
            sw_next = tl.load(ws_ptrs + g * stride_wsg, mask=more_n, other=0.0)
            acc = _group_partial(a, w, sa, sw, acc, HALF, USE_ASM)
            a, w, sa, sw = a_next, w_next, sa_next, sw_next
    else:
        for g in range(0, n_g):
            a = tl.load(a_ptrs + g * HALF, mask=mask_m[:, None], other=0)
            w = tl.load(w_ptrs + g * HALF, mask=mask_n[None, :], other=0)
            sa = tl.load(as_ptrs + g * stride_asg, mask=mask_m, other=0.0)
            sw = tl.load(ws_ptrs + g * stride_wsg, mask=mask_n, other=0.0)
            acc = _group_partial(a, w, sa, sw, acc, HALF, USE_ASM)

    # the outlier block and the bias belong to the first split only (masked off in the others)
    if HAS_OUT:
        first_m = mask_m & (offs_m * 0 + split == 0)
        acc = add_outlier_block(acc, ao_ptr, aos_ptr, wo_ptr, wos_ptr, offs_m, offs_n, first_m, mask_n, N_OUT,
                                stride_aom, stride_won, BLOCK_O)

    if HAS_BIAS:
        first_n = mask_n & (offs_n * 0 + split == 0)
        acc += tl.load(bias_ptr + offs_n, mask=first_n, other=0.0).to(tl.float32)[None, :]
    # split-K: out_ptr is the (splits, M, N) float32 workspace, summed by _sum_splits_kernel
    out_ptrs = out_ptr + split * M * N + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


_GEMM_KERNELS = {
    regime: triton.autotune(configs=_configs(regime), key=["M_BUCKET", "N", "G", "N_OUT", "SPLITS"])(_w4a4_gemm_kernel_jit)
    for regime in _GEMM_REGIMES
}


# ---------------------------------------------------------------- split-K
# Small M streams the weights, and a (BLOCK_N-wide, all of K) program per tile leaves too few
# programs (4096 -> 4096 at M=1: 64 of them on 132 SMs, each walking 32 groups one by one) and too
# few bytes in flight to reach the copy bandwidth. Split-K gives each program a share of the groups
# and writes float32 partials to a (splits, M, N) workspace; _sum_splits_kernel adds them and casts.
SPLIT_MAX_M = 64  # past this the tiles along M already fill the GPU
_MIN_GROUPS_PER_SPLIT = 4
_MAX_SPLITS = 8


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: small test shapes still take the split path
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_k(m: int, n: int, groups: int, device: torch.device) -> int:
    """Splits of the K groups (1 = none). Split while the tiles do not fill the GPU (~3 programs
    per SM wanted) or a program would walk more than 64 groups, keeping >= 4 groups a share.
    Measured on the H100 (benchmarks/results/h100/bench_linear_s*): 4096 -> 4096 at M=1
    11.7 -> 8.1 us with 4 splits (9.1 with 8), 28672 -> 8192 at M=64 227 -> 135 us; 4096 -> 12288
    (192 tiles of 64) got slower when split (M=64: 35 -> 41 us), hence no split once the tiles
    fill the SMs."""
    if m > SPLIT_MAX_M:
        return 1
    sms = _sm_count(device)
    tiles = triton.cdiv(n, 64) * triton.cdiv(m, 32)  # the typical tile of the small-M configs
    if tiles >= sms and groups <= 64:
        return 1
    splits = 1
    while ((tiles * splits < 3 * sms or groups > 64 * splits) and splits < _MAX_SPLITS
           and groups >= 2 * splits * _MIN_GROUPS_PER_SPLIT):
        splits *= 2
    return no_empty_split(groups, splits)


@triton.jit
def _sum_splits_kernel(ws_ptr, out_ptr, MN, SPLITS, SPLITS_P: tl.constexpr, BLOCK: tl.constexpr):
    # all splits in one 2-D load: a loop over them cost ~5 us of serial load latency per call
    # at M=1 (H100 profile of a decode step)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    s = tl.arange(0, SPLITS_P)
    mask = (s[:, None] < SPLITS) & (offs[None, :] < MN)
    part = tl.load(ws_ptr + s[:, None] * MN + offs[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + offs, tl.sum(part, axis=0).to(out_ptr.dtype.element_ty), mask=offs < MN)


# Under torch.compile the split-K partials are summed by tensor adds in the graph, which Inductor
# fuses into the kernel that reads the GEMM's output (RoPE, the residual add and its RMSNorm
# statistic) instead of one more launch per GEMM: in a compiled Llama-2-7B batch-1 decode step on
# the H200 the summing kernel took 311 of 3482 us, ~2.4 us for each of its 128 launches
# (results/h200/bench_generate_llama2-7b_atomkv4_b1_profile.log). ATOM_AO_SPLIT_SUM=kernel keeps
# the kernel under compile too (A/B timing). Eager calls always use the kernel (one launch).
# At batch 64 too, though there the sum slows the residual add + RMSNorm kernel it joins (64 rows,
# 64 programs): Llama-3-8B, H200, session 34, one run, 4.94 ms a token in the graph against 5.11
# with the kernel (results/h200/session34_generate_llama3_b64_splitsum_ab_s34.log).
SPLIT_SUM_IN_GRAPH = os.environ.get("ATOM_AO_SPLIT_SUM", "graph") != "kernel"


def sum_partials(ws: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (M, N) sum of a (splits, M, N) float32 workspace in split order, cast to ``dtype``."""
    total = ws[0]
    for s in range(1, ws.shape[0]):
        total = total + ws[s]
    return total.to(dtype)


def _finish_splits(ws: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if ws is out:
        return out
    if SPLIT_SUM_IN_GRAPH and is_fake(ws):  # traced by torch.compile: leave the sum to Inductor
        return sum_partials(ws, out.dtype)
    _sum_splits(ws, out)
    return out


def _workspace(out: torch.Tensor, splits: int) -> torch.Tensor:
    return out if splits == 1 else torch.empty((splits, *out.shape), dtype=torch.float32, device=out.device)


def _sum_splits(ws: torch.Tensor, out: torch.Tensor) -> None:
    if ws is out:
        return
    mn, splits = out.numel(), ws.shape[0]
    block = max(64, 4096 // triton.next_power_of_2(splits))  # <= 4096 elements a program
    wrap_triton(_sum_splits_kernel)[(triton.cdiv(mn, block),)](ws, out, mn, splits,
                                                               SPLITS_P=triton.next_power_of_2(splits), BLOCK=block)


# From this M on, the GEMM unpacks both operands to INT8 first (w4a4_gemm_unpacked): the extra
# bytes (1.5 per weight element) are paid back once the tiles along M are many. H200
# (results/h200/bench_linear_fcvt_*), GEMM alone, Llama-2-7B qkv / down / o: M=4096 1030 -> 785,
# 926 -> 697, 352 -> 254 us; M=1024 270 -> 211, 237 -> 191, 90.6 -> 71.5 us; M=256 slower
# (69.3 -> 95.5 us on down).
UNPACKED_MIN_M = 1024

# One token takes the dp4a stream kernel (w4a4_gemv); False: the swap kernel, as for 2..64 tokens.
GEMV_DEFAULT = True


def default_path(m: int, splits: int | None = None) -> str:
    """The GEMM path for m tokens, group sizes up to MAX_GROUP_SIZE."""
    if m >= UNPACKED_MIN_M and splits in (None, 1):
        return "unpacked"
    if m == 1 and GEMV_DEFAULT:
        return "gemv"
    if m <= SWAP_MAX_M:
        return "swap"
    return "packed"


def check_gemm_args(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                    w_outlier_scale, bias, group_size) -> None:
    """Shapes, dtypes and devices of the GEMM operands; a clear error for each mismatch."""
    m, n = a_packed.shape[0], w_packed.shape[0]
    groups = a_scale.shape[1]
    n_out = a_outliers.shape[1]
    expect = [
        ("a_packed", a_packed, (m, groups * group_size // 2), torch.uint8),
        ("a_scale", a_scale, (m, groups), torch.float32),
        ("a_outliers", a_outliers, (m, n_out), torch.int8),
        ("a_outlier_scale", a_outlier_scale, (m,), torch.float32),
        ("w_packed", w_packed, (n, groups * group_size // 2), torch.uint8),
        ("w_scale", w_scale, (n, groups), torch.float32),
        ("w_outliers", w_outliers, (n, n_out), torch.int8),
        ("w_outlier_scale", w_outlier_scale, (n,), torch.float32),
    ]
    if bias is not None:
        expect.append(("bias", bias, (n,), bias.dtype))
    for name, t, shape, dtype in expect:
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"w4a4_gemm: {name} is {tuple(t.shape)} {t.dtype}, expected {shape} {dtype}")
        if t.device != a_packed.device:
            raise ValueError(f"w4a4_gemm: {name} is on {t.device}, a_packed on {a_packed.device}")


def w4a4_gemm_triton(
    a_packed, a_scale, a_outliers, a_outlier_scale,
    w_packed, w_scale, w_outliers, w_outlier_scale,
    bias, group_size: int, out_dtype: torch.dtype, *, splits: int | None = None, path: str | None = None,
) -> torch.Tensor:
    """Launch the Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1).

    ``splits``: split-K factor (default: ``_split_k``'s choice; tests force one).
    ``path``: "packed" (nibbles unpacked in the main loop, tokens on the MMA's M side), "swap"
    (``w4a4_gemm_swap``: weight rows on the MMA's M side, for up to SWAP_MAX_M tokens), "gemv"
    (``w4a4_gemv``: one token, dp4a on the CUDA cores) or "unpacked"
    (``w4a4_gemm_unpacked``: INT8 copies first, for large M); default by M (``default_path``)."""
    m, n = a_packed.shape[0], w_packed.shape[0]
    n_out = a_outliers.shape[1]
    out = torch.empty((m, n), dtype=out_dtype, device=a_packed.device)
    if m == 0 or n == 0:
        return out
    # inner dims must be unit-stride for the tile loads; the ops produce them that way
    a_packed, w_packed = a_packed.contiguous(), w_packed.contiguous()
    a_outliers, w_outliers = a_outliers.contiguous(), w_outliers.contiguous()
    groups = a_scale.shape[1]
    if path is None:
        # the nibble kernels keep a group's sum of 16 x codes exact in float32 up to MAX_GROUP_SIZE;
        # the INT8-copies path has no such bound
        path = "unpacked" if group_size > MAX_GROUP_SIZE and splits in (None, 1) else default_path(m, splits)
    if path in ("packed", "swap", "gemv") and group_size > MAX_GROUP_SIZE:
        raise ValueError(f"w4a4_gemm: path={path!r} takes group_size <= {MAX_GROUP_SIZE} (a group's INT32 sum of "
                         f"16 x codes must convert to float32 exactly), got {group_size}; use path='unpacked'")
    if (path not in ("packed", "swap", "unpacked", "gemv") or (path == "unpacked" and splits not in (None, 1))
            or (path == "swap" and m > SWAP_MAX_M) or (path == "gemv" and m != 1)):
        raise ValueError(f"w4a4_gemm: path={path!r} (with splits={splits}, M={m}) is not one of 'packed', "
                         f"'swap' (M <= {SWAP_MAX_M}), 'gemv' (M = 1), 'unpacked' (no split-K)")
    if path == "gemv":  # one token: its scales need a unit group stride (the other kernels take any)
        a_scale, w_scale = (t if t.stride(1) == 1 else t.contiguous() for t in (a_scale, w_scale))
    if path == "unpacked":
        return w4a4_gemm_unpacked(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                                  w_outlier_scale, bias, group_size, out)
    if splits is None:
        splits = (swap_split_k(m, n, groups, _sm_count(out.device)) if path == "swap"
                  else gemv_split_k(n, groups, _sm_count(out.device)) if path == "gemv"
                  else _split_k(m, n, groups, out.device))
    if not splits_fit(groups, splits):
        raise ValueError(f"w4a4_gemm: splits={splits} must leave every split some of the {groups} groups")
    ws = _workspace(out, splits)
    if path == "gemv":
        launch_gemv(a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers,
                    w_outlier_scale, bias, ws, group_size, splits)
        return _finish_splits(ws, out)
    if path == "swap":  # same arguments as the tile kernel, its own grid
        kernel, meta = swap_kernel_and_meta(m)
        # full tiles for every config offered: unmasked main loop
        meta = dict(meta, EVEN_N=SWAP_UNMASKED and n % FULL_N == 0, EVEN_M=SWAP_UNMASKED and m % FULL_M == 0,
                    OUT_SHARE=swap_module.OUT_SHARE if splits > 1 and n_out > 0 else 0)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits, triton.cdiv(m, meta["BLOCK_M"]))  # noqa: E731
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
        if INTERPRET:
            kernel, meta = _w4a4_gemm_kernel_jit, _interpreter_meta(m)
        else:
            kernel, meta = _GEMM_KERNELS[min(r for r in _GEMM_REGIMES if m <= r)], {}
    wrap_triton(kernel)[grid](
        a_packed, a_scale, a_outliers, a_outlier_scale,
        w_packed, w_scale, w_outliers, w_outlier_scale,
        bias if bias is not None else a_scale, ws,
        m, n, groups, n_out, m_bucket(m, 4096), splits,
        a_packed.stride(0), a_scale.stride(0), max(a_outliers.stride(0), 1),
        w_packed.stride(0), w_scale.stride(0), max(w_outliers.stride(0), 1),
        out.stride(0),
        a_scale.stride(1), w_scale.stride(1),
        HALF=group_size // 2,
        # 64 outlier channels a step, not 128: sm_90a ptxas, 128 made the swap kernel's 128x16 tile take
        # 229 registers (128 with 64) and the tile kernel's 64x128 spill 468 bytes inside its main loop
        BLOCK_O=min(64, outlier_block(n_out)),
        HAS_OUT=n_out > 0,
        HAS_BIAS=bias is not None,
        USE_ASM=not INTERPRET,
        **meta,
    )
    return _finish_splits(ws, out)


@triton_op("atom_ao::w4a4_gemm", mutates_args=())
def w4a4_gemm(
    a_packed: torch.Tensor,
    a_scale: torch.Tensor,
    a_outliers: torch.Tensor,
    a_outlier_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_outliers: torch.Tensor,
    w_outlier_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(M, N) = activations (from ``quantize_activation``) x quantized weight^T (+ bias).

    CUDA runs the Triton kernel; other devices run the reference (``atom_ao.format``)."""
    args = (a_packed, a_scale, a_outliers, a_outlier_scale, w_packed, w_scale, w_outliers, w_outlier_scale, bias)
    check_gemm_args(*args, group_size)
    if a_packed.is_cuda:
        return w4a4_gemm_triton(*args, group_size, out_dtype)
    return w4a4_gemm_ref(*args, group_size, out_dtype)
