"""Pieces shared by the W4A4 kernels (the GEMMs; ``m_bucket`` by the activation quantizers too)."""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The nibble kernels' group sums (tile, swap, gemv; not the INT8-copies path) go to float32 by the
# int -> float instruction (I2FP.F32.S32 on sm_90a); ATOM_AO_GROUP_CVT=0 (set before the first
# launch: a compiled kernel does not follow a change) takes the mantissa trick instead, the same
# float (both exact). H200, cold weights (results/h200/explore_decode_gemm_cvt_session16.log): the
# swap kernel at M = 64 on the Llama-2-7B linears 95.6 -> 92.7 us summed (down 24.3 -> 22.8), M = 1
# and 16 within 1-4%; Llama-2-7B batch 64 decode 8.47 -> 8.35 ms a token (two runs, noise ~3%).
# Offline its 64x64 main loop issues 286 instead of 318 instructions a group.
CVT_GROUP_SUMS = tl.constexpr(os.environ.get("ATOM_AO_GROUP_CVT", "1") != "0")


@triton.jit
def group_sum_x256_to_f32(x, HALF: tl.constexpr):
    """A group's dot of 16 x codes (|x| <= 256 * group_size * 64 = group_size * 2^14) -> float32,
    exactly: by the int -> float conversion (exact below 2^24) up to group size 1008 (larger
    groups are refused by the launchers), or with ATOM_AO_GROUP_CVT=0 by the mantissa trick up
    to group size 256 (|x| <= 2^22)."""
    if HALF <= 128 and not CVT_GROUP_SUMS:
        return group_sum_to_f32(x)
    return x.to(tl.float32)


@triton.jit
def group_sum_to_f32(x):
    """Exact int32 -> float32 for |x| <= 2**22 (a group's dot: |x| <= group_size * 64) by the
    mantissa trick: the bits of 1.5 * 2**23 plus x are the float 1.5 * 2**23 + x, and one exact
    subtraction leaves x. An integer add and a float add run at full rate, where the int -> float
    conversion runs at 16 a clock per SM, one per output element per group. (H200,
    explore_large_m.py: no measurable gain alone at M = 4096; with the scales prefetched a group
    ahead, 516 -> 543 TOPS.)"""
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def split_share(G, SPLITS, split):
    """Split-K: the first group and the number of groups of split ``split`` of SPLITS."""
    g_per = tl.cdiv(G, SPLITS)
    g0 = split * g_per
    return g0, tl.minimum(G, g0 + g_per) - g0


def no_empty_split(groups: int, splits: int) -> int:
    """The split count to launch for about ``splits`` shares of ``groups``: ``split_share`` gives
    each cdiv(groups, splits) groups, which can leave the last shares empty; this count has none."""
    return triton.cdiv(groups, triton.cdiv(groups, splits))


def splits_fit(groups: int, splits: int) -> bool:
    """Whether ``splits`` shares (``split_share``) each get some of ``groups`` (no groups: 1 split)."""
    return 1 <= splits <= max(groups, 1) and (groups == 0 or no_empty_split(groups, splits) == splits)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column) in grouped order: GROUP_M tile rows walk the columns
    together, so neighbouring programs share weight tiles in L2."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % group_rows, (pid % width) // group_rows


@triton.jit
def add_outlier_block(acc, ao_ptr, aos_ptr, wo_ptr, wos_ptr, offs_m, offs_n, rows_m, mask_n, N_OUT,
                      stride_aom, stride_won, BLOCK_O: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) + the INT8 outlier block, the last K step: INT8 dots of BLOCK_O
    channels into INT32, times the per-token and per-row outlier scales. Only tokens ``rows_m``
    are read (0, not 0 * inf, for the others)."""
    offs_o = tl.arange(0, BLOCK_O)
    dot_o = tl.zeros(acc.shape, dtype=tl.int32)
    for o0 in range(0, N_OUT, BLOCK_O):
        mask_o = (o0 + offs_o) < N_OUT
        ao = tl.load(ao_ptr + offs_m[:, None] * stride_aom + (o0 + offs_o)[None, :],
                     mask=rows_m[:, None] & mask_o[None, :], other=0)
        wo = tl.load(wo_ptr + offs_n[None, :] * stride_won + (o0 + offs_o)[:, None],
                     mask=mask_n[None, :] & mask_o[:, None], other=0)
        dot_o = tl.dot(ao, wo, dot_o, out_dtype=tl.int32)
    sao = tl.load(aos_ptr + offs_m, mask=rows_m, other=0.0)
    swo = tl.load(wos_ptr + offs_n, mask=mask_n, other=0.0)
    return acc + dot_o.to(tl.float32) * sao[:, None] * swo[None, :]


# The two nibbles of 4 bytes as INT8 codes times 16, in 32-bit registers: a two's-complement
# nibble in the high half of a byte (low half zero) *is* the signed byte 16 * code. High nibbles:
# one AND; low nibbles: a shift and an AND: 3 instructions a word, where sign-extending each
# nibble in place took 9. The dots then carry a factor 256 (exact in INT32: a group's sum stays
# below 2^21), taken off with the scales (SCALE_256: a power of two, so the same float bits).
# One line: Inductor pastes a kernel's source (and the repr of its constexpr globals) into a
# triple-quoted literal without escaping backslashes, so a "\n" here would break it.
_UNPACK_X16_ASM = tl.constexpr("{ .reg .b32 t; shl.b32 t, $2, 4; and.b32 $0, t, 0xF0F0F0F0; and.b32 $1, $2, 0xF0F0F0F0; }")
SCALE_256 = tl.constexpr(1.0 / 256.0)


@triton.jit
def unpack_int4_x16(packed, USE_ASM: tl.constexpr):
    """uint8 tile -> (16 * low codes, 16 * high codes) as int8 tiles (see _UNPACK_X16_ASM)."""
    if USE_ASM:
        return tl.inline_asm_elementwise(_UNPACK_X16_ASM, "=r,=r,r", [packed], dtype=(tl.int8, tl.int8),
                                         is_pure=True, pack=4)
    return (packed << 4).to(tl.int8, bitcast=True), (packed & 0xF0).to(tl.int8, bitcast=True)


MAX_GROUP_SIZE = 1008  # 16 x codes: a group's dot below 2^24 (see group_sum_x256_to_f32)


def m_bucket(m: int, cap: int) -> int:
    """Autotune key for M: powers of two up to ``cap``, so each batch size does not retune."""
    return min(cap, triton.next_power_of_2(max(m, 1)))


def outlier_block(n_out: int) -> int:
    """Outlier channels per INT8 dot of the outlier K step: 32..128."""
    return max(32, min(128, triton.next_power_of_2(max(n_out, 1))))
