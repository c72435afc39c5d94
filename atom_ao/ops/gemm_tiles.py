"""Pieces shared by the W4A4 kernels (the GEMMs; ``m_bucket`` by the activation quantizers too)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def group_sum_to_f32(x):
    """Exact int32 -> float32 for |x| < 2**22 (a group's dot: |x| <= group_size * 64) by the
    mantissa trick: the bits of 1.5 * 2**23 plus x are the float 1.5 * 2**23 + x, and one exact
    subtraction leaves x. An integer add and a float add run at full rate, where the int -> float
    conversion runs at 16 a clock per SM, one per output element per group. (H200,
    explore_large_m.py: no measurable gain alone at M = 4096; with the scales prefetched a group
    ahead, 516 -> 543 TOPS.)"""
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


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


# Sign-extend the two nibbles of 4 bytes at once in 32-bit registers: unsigned nibble u -> byte
# u | (u & 8) * 30 (0xF0 when bit 3 is set; 8 * 30 < 256, so no carry crosses a byte).
# One line: torch 2.11's Inductor pastes a kernel's source (and the repr of its constexpr
# globals) into a '''...''' literal without escaping backslashes, so a "\n" here would break it.
_UNPACK_ASM = tl.constexpr("{ .reg .b32 lo, hi, t; and.b32 lo, $2, 0x0F0F0F0F; shr.u32 hi, $2, 4; and.b32 hi, hi, 0x0F0F0F0F; and.b32 t, lo, 0x08080808; mul.lo.u32 t, t, 30; or.b32 $0, lo, t; and.b32 t, hi, 0x08080808; mul.lo.u32 t, t, 30; or.b32 $1, hi, t; }")


@triton.jit
def unpack_int4(packed, USE_ASM: tl.constexpr):
    """uint8 tile -> (low nibbles, high nibbles) as sign-extended int8 tiles."""
    if USE_ASM:
        return tl.inline_asm_elementwise(_UNPACK_ASM, "=r,=r,r", [packed], dtype=(tl.int8, tl.int8),
                                         is_pure=True, pack=4)
    b = packed.to(tl.int8, bitcast=True)
    return (b << 4) >> 4, b >> 4


def m_bucket(m: int, cap: int) -> int:
    """Autotune key for M: powers of two up to ``cap``, so each batch size does not retune."""
    return min(cap, triton.next_power_of_2(max(m, 1)))


def outlier_block(n_out: int) -> int:
    """Outlier channels per INT8 dot of the outlier K step: 32..128."""
    return max(32, min(128, triton.next_power_of_2(max(n_out, 1))))
