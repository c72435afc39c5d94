"""``atom_ao::quantize_activation``: permute + dynamic per-token quantization of activations.

The Triton kernel does the whole quantizer in one pass over ``x`` (one launch). Its programs
are (row split, column) pairs, columns innermost so that programs running together read the
same rows: a column is ``GPB`` groups of the normal channels, or (the last one, when there are
outliers) all the INT8 outlier channels. A program loads its part of ``perm`` once, then walks
its rows ``BLOCK_M`` at a time, issuing the next row block's gathers before quantizing the
current one (a register double buffer). Each half-group is a (J, BLOCK_M, GPB, LANES) tile
(see ``_tile_index``): lanes run along consecutive permuted channels, so with the permutation
``quantize_`` builds (normal channels in their original order) a warp's gather reads
consecutive addresses; reductions stay inside warps. It writes the packed bytes (byte j of a
group: element j | element j + group_size / 2 << 4, the ``pack_int4`` layout) and the scales.
Decode (M <= 32) uses its own autotuned configs: one row block per program, many programs.

The same kernel runs the fused quantizers' producers (``MODE``, ``atom_ao.ops.producers``):
RMSNorm (its row statistics from a small kernel first, its weight loaded once per program) and
SiLU(gate) * up (both gathered); see ``atom_ao.ops.fused_quantize`` for when.

It agrees with ``quantize_activation_ref`` bit for bit:

* all arithmetic is float32, in the reference's order: ``scale = (amax * clip) / 7`` (clip
  rounded to float32, as torch does for a Python scalar), ``inv = 1 / scale``, ``x * inv``;
* both divisions are IEEE round-to-nearest (``tl.math.div_rn``; a plain ``/`` may be an
  approximate division on the GPU);
* rounding is half to even: on NVIDIA one ``cvt.rni.s32.f32`` (saturating, NaN -> 0), then an
  integer clamp; in the interpreter ``(t + 1.5 * 2**23) - 1.5 * 2**23`` on the value already
  clamped to the integer range (clamping then rounding equals rounding then clamping for
  integer bounds; the clamp also keeps the multiply and the add from fusing into an FMA);
* the absmax is an integer max over the float bits with the sign bit cleared: NaN bits sort
  above +inf, so a NaN anywhere in a group makes its scale NaN (a float max may drop NaN);
  NaN and inf * 0 products quantize to 0, as in the reference.
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
from atom_ao.ops.gemm_tiles import m_bucket
from atom_ao.ops.producers import KIND, PLAIN, SILU_MUL, _produce_value

_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: adding it rounds |t| <= 2**22 to an integer, half to even


_SMALL_M = 32  # up to this many rows: the decode configs
# read when the kernel is decorated, like Triton itself does
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Triton 3.6 breaks ties in the memory-access order by the lowest dimension, 3.9 by the
# highest (see _tile_index); results are identical either way, only coalescing changes
_LANES_FIRST = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9)


def _configs(small: bool):
    """BLOCK_M rows per step, GPB groups per program, LANES lanes per half-group (each lane
    takes HALF / LANES of its channels), PROGS: about how many programs to launch (the rows are
    split among them), warps. BLOCK_M * GPB * LANES = 32 * warps keeps every reduction inside a
    warp. No ``prune_configs_by``: torch's ``wrap_triton`` rebuilds a pruned autotuner on every
    eager call (forgetting what it tuned), so the launcher picks one of two autotuners by M."""
    if _INTERPRET:  # the CPU interpreter: few, large programs
        return [triton.Config({"BLOCK_M": 4, "GPB": 2, "LANES": 16, "PROGS": 8}, num_warps=4, num_stages=1)]
    if small:  # decode / small batches: latency-bound, one row block per program
        shapes = [(1, 1, 32, 1), (2, 1, 16, 1), (4, 1, 8, 1), (2, 2, 8, 1), (4, 2, 8, 2), (8, 1, 8, 2)]
        return [triton.Config({"BLOCK_M": bm, "GPB": gpb, "LANES": lanes, "PROGS": 4096}, num_warps=w, num_stages=1)
                for bm, gpb, lanes, w in shapes]
    # prefill: memory-bound; loop over row blocks with the next one's loads in flight. (Prefetching
    # rows further ahead with prefetch.global into L1 or L2 was slower in every case timed on the
    # H200, session 10: benchmarks/results/h200/explore_quantize_session10.log)
    shapes = [(4, 1, 32, 4), (8, 1, 32, 8), (8, 1, 16, 4), (16, 1, 16, 8), (8, 2, 16, 8), (16, 1, 8, 4)]
    return [triton.Config({"BLOCK_M": bm, "GPB": gpb, "LANES": lanes, "PROGS": pr}, num_warps=w, num_stages=1)
            for bm, gpb, lanes, w in shapes for pr in (1024, 4096)]


@triton.jit
def _round_clamp(t, lo: tl.constexpr, hi: tl.constexpr, PTX: tl.constexpr):
    """float32 -> int32: round half to even, clamp to [lo, hi], NaN -> 0."""
    if PTX:
        # one instruction: round to nearest even, saturating, NaN -> 0 (PTX ISA, cvt)
        r = tl.inline_asm_elementwise("cvt.rni.s32.f32 $0, $1;", "=r,r", [t], dtype=tl.int32, is_pure=True, pack=1)
        return tl.minimum(tl.maximum(r, lo), hi)
    else:
        # portable (the interpreter): clamp first (equal to clamping after, for integer bounds),
        # then 1.5 * 2**23 rounds half to even; the clamp also keeps x * inv + magic from fusing
        is_nan = t != t
        t = tl.minimum(tl.maximum(t, lo), hi)
        r = (t + _ROUND_MAGIC) - _ROUND_MAGIC
        return tl.where(is_nan, 0.0, r).to(tl.int32)


@triton.jit
def _mul_rn(a, b, PTX: tl.constexpr):
    """a * b rounded on its own: ptxas contracts a plain product into a following add or
    subtract (one FMA, one rounding), which the reference does not; mul.rn is never contracted."""
    if PTX:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return a * b


@triton.jit
def _safe_inverse(scale):
    # IEEE 1 / scale where scale > 0, else 0 (zero, NaN scales); the divisor is kept nonzero
    pos = scale > 0
    return tl.where(pos, tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), tl.where(pos, scale, 1.0)), 0.0)


@triton.jit
def _abs_bits(v):
    # |v| as int32 bits: orders like |v| for non-negative floats, and NaN sorts above +inf
    return v.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _gather(x_ptr, rows, ok_rows, stride_xm, cols):
    """x[rows, cols] as float32 over a (D0, BLOCK_M, C, D3) tile (``_tile_index``): rows
    (BLOCK_M,), cols (D0, 1, C, D3) column offsets (already times the column stride; valid even
    where the channel is padding). Masked-off rows are left undefined (their results are never
    stored); padding columns are zeroed after the producer (``_produced``)."""
    row_ptr = x_ptr + rows.to(tl.int64) * stride_xm
    return tl.load(row_ptr[None, :, None, None] + cols, mask=ok_rows[None, :, None, None]).to(tl.float32)


@triton.jit
def _gather_inputs(a_ptr, b_ptr, rows, ok_rows, stride_am, stride_bm, cols, MODE: tl.constexpr):
    # the producer's gathered inputs of a row block: a (x or gate), b (up: SiLU only)
    a = _gather(a_ptr, rows, ok_rows, stride_am, cols)
    b = a
    if MODE == 1:
        b = _gather(b_ptr, rows, ok_rows, stride_bm, cols)
    return a, b


@triton.jit
def _row_stats(rstd_ptr, rows, ok_rows, MODE: tl.constexpr):
    # RMSNorm's statistic of each row of a row block (zeros for the other producers)
    rstd = tl.zeros(rows.shape, tl.float32)
    if MODE == 0:
        rstd = tl.load(rstd_ptr + rows, mask=ok_rows, other=1.0)
    return rstd


@triton.jit
def _produced(a, b, w, rstd, ok_cols, MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
              CAST_FIRST: tl.constexpr, COL_MASK: tl.constexpr):
    # the values to quantize (atom_ao.ops.producers); padding channels 0, as the reference pads
    # (per-element masks cost instructions: only when some tile has padding, COL_MASK)
    v = _produce_value(a, b, w, rstd[None, :, None, None], MODE, X_KIND, OUT_KIND, CAST_FIRST)
    if COL_MASK:
        v = tl.where(ok_cols, v, 0.0)
    return v


@triton.jit
def _tile_index(LANES: tl.constexpr, J: tl.constexpr, C: tl.constexpr, LANES_FIRST: tl.constexpr):
    """Index parts of a (D0, BLOCK_M, C, D3) tile, {D0, D3} = {LANES, J}: the channel index
    j = jj * LANES + lane (0 <= j < J * LANES) and c, both shaped (D0, 1, C, D3).

    The gathers have no provable contiguity, so Triton orders their layout by dimension index,
    and which end it starts from changed between releases: the lane dimension is put where
    the installed Triton puts its threads first (``_LANES_FIRST``). Layout: lanes along
    consecutive channels (LANES of them), warps along C and BLOCK_M, the J dimension inside
    each thread; reductions over j are then in-thread plus warp shuffles (never through
    shared memory), and a warp's gather of a near-identity perm reads consecutive addresses.
    Only the layout differs between the two arrangements, never the results."""
    if LANES_FIRST:
        ll = tl.arange(0, LANES)[:, None, None, None]
        jj = tl.arange(0, J)[None, None, None, :]
    else:
        jj = tl.arange(0, J)[:, None, None, None]
        ll = tl.arange(0, LANES)[None, None, None, :]
    cc = tl.arange(0, C)[None, None, :, None]
    return jj * LANES + ll, cc


@triton.jit
def _int4_groups(a_ptr, b_ptr, w_ptr, rstd_ptr, perm_ptr, q_ptr, s_ptr, pid_c, rb_start, rb_end, M, K_NORMAL, G,
                 stride_am, stride_ak, stride_bm, stride_qm, stride_sm, stride_sg, unit, clip_ratio,
                 MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr, CAST_FIRST: tl.constexpr,
                 HALF: tl.constexpr, HALF_P: tl.constexpr, GPB: tl.constexpr, BLOCK_M: tl.constexpr,
                 LANES: tl.constexpr, PTX: tl.constexpr, IDX64: tl.constexpr, COL_MASK: tl.constexpr,
                 LANES_FIRST: tl.constexpr, PDL: tl.constexpr, PERM_FIRST: tl.constexpr):
    # groups g of this program: each half-group is a tile of HALF_P // LANES x LANES channels
    # (see _tile_index) by BLOCK_M rows by GPB groups; perm (and RMSNorm's weight) is loaded
    # once, for all row blocks
    j, gi = _tile_index(LANES, HALF_P // LANES, GPB, LANES_FIRST)
    g = pid_c * GPB + gi
    pos_lo = g * (2 * HALF) + j  # positions after perm
    ok_j = j < HALF
    m_lo = (pos_lo < K_NORMAL) & ok_j  # padding positions load 0, as the reference pads
    m_hi = (pos_lo + HALF < K_NORMAL) & ok_j
    c_lo = tl.load(perm_ptr + pos_lo, mask=m_lo, other=0)
    c_hi = tl.load(perm_ptr + pos_lo + HALF, mask=m_hi, other=0)
    if PERM_FIRST:  # perm is on its way: now wait for the kernel that wrote x
        wait_then_release(PDL)
    w_lo = 0.0
    w_hi = 0.0
    if MODE == 0:
        w_lo = tl.load(w_ptr + c_lo, mask=m_lo, other=0.0).to(tl.float32)
        w_hi = tl.load(w_ptr + c_hi, mask=m_hi, other=0.0).to(tl.float32)
    if IDX64:
        c_lo = c_lo.to(tl.int64)
        c_hi = c_hi.to(tl.int64)
    c_lo = c_lo * stride_ak
    c_hi = c_hi * stride_ak
    ok_gj = (g < G) & ok_j
    # ``unit`` is 1 at run time; Triton cannot see it, so the byte store does not look
    # contiguous and does not widen the gather's per-thread vector (it would spread the lanes)
    q_cols = g * HALF + j * unit
    offs_m = tl.arange(0, BLOCK_M)

    # software pipeline over row blocks: the next block's gathers are issued before this one's math
    row_end = tl.minimum(rb_end * BLOCK_M, M)  # rows of this program: [rb_start * BLOCK_M, row_end)
    rows = rb_start * BLOCK_M + offs_m
    al, bl = _gather_inputs(a_ptr, b_ptr, rows, rows < row_end, stride_am, stride_bm, c_lo, MODE)
    ah, bh = _gather_inputs(a_ptr, b_ptr, rows, rows < row_end, stride_am, stride_bm, c_hi, MODE)
    rstd = _row_stats(rstd_ptr, rows, rows < row_end, MODE)
    for rb in range(rb_start, rb_end):
        rows = rb * BLOCK_M + offs_m
        ok_m = rows < M
        nxt = rows + BLOCK_M
        nal, nbl = _gather_inputs(a_ptr, b_ptr, nxt, nxt < row_end, stride_am, stride_bm, c_lo, MODE)
        nah, nbh = _gather_inputs(a_ptr, b_ptr, nxt, nxt < row_end, stride_am, stride_bm, c_hi, MODE)
        nrstd = _row_stats(rstd_ptr, nxt, nxt < row_end, MODE)
        xl = _produced(al, bl, w_lo, rstd, m_lo, MODE, X_KIND, OUT_KIND, CAST_FIRST, COL_MASK)
        xh = _produced(ah, bh, w_hi, rstd, m_hi, MODE, X_KIND, OUT_KIND, CAST_FIRST, COL_MASK)

        bits = tl.maximum(tl.max(_abs_bits(xl), axis=0), tl.max(_abs_bits(xh), axis=0))
        amax = tl.max(bits, axis=2).to(tl.float32, bitcast=True)  # (BLOCK_M, GPB), NaN if any NaN
        scale = tl.math.div_rn(amax * clip_ratio, 7.0)
        inv = _safe_inverse(scale)[None, :, :, None]
        ql = _round_clamp(xl * inv, -8, 7, PTX)
        qh = _round_clamp(xh * inv, -8, 7, PTX)
        packed = ((ql & 0xF) | (qh << 4)).to(tl.uint8)  # the cast drops the bits above 8

        rows64 = rows.to(tl.int64)
        q_ptrs = q_ptr + (rows64 * stride_qm)[None, :, None, None] + q_cols
        tl.store(q_ptrs, packed, mask=ok_m[None, :, None, None] & ok_gj)
        # the scales are stored from the tile's own layout (by the lane holding j = 0): a
        # (BLOCK_M, GPB) store would get a layout of its own and a shared-memory round trip
        s_ptrs = tl.broadcast_to(s_ptr + (rows64 * stride_sm)[None, :, None, None] + g * stride_sg, xl.shape)
        tl.store(s_ptrs, scale[None, :, :, None] + tl.zeros_like(xl), mask=ok_m[None, :, None, None] & (g < G) & (j == 0))
        al, bl, ah, bh, rstd = nal, nbl, nah, nbh, nrstd


@triton.jit
def _int8_outliers(a_ptr, b_ptr, w_ptr, rstd_ptr, perm_ptr, qo_ptr, so_ptr, rb_start, rb_end, M, K_NORMAL, N_OUT,
                   stride_am, stride_ak, stride_bm, stride_qom, unit,
                   MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr, CAST_FIRST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, LANES: tl.constexpr,
                   PTX: tl.constexpr, IDX64: tl.constexpr, N_OUT_C: tl.constexpr, LANES_FIRST: tl.constexpr,
                   PDL: tl.constexpr, PERM_FIRST: tl.constexpr):
    # the INT8 outlier channels of these row blocks, all in one tile of BLOCK_O // LANES x LANES
    # channels by BLOCK_M rows
    o, _ = _tile_index(LANES, BLOCK_O // LANES, 1, LANES_FIRST)
    ok_o = o < N_OUT
    c = tl.load(perm_ptr + K_NORMAL + o, mask=ok_o, other=0)
    if PERM_FIRST:
        wait_then_release(PDL)
    w = 0.0
    if MODE == 0:
        w = tl.load(w_ptr + c, mask=ok_o, other=0.0).to(tl.float32)
    if IDX64:
        c = c.to(tl.int64)
    c = c * stride_ak
    o_cols = o * unit  # see _int4_groups
    offs_m = tl.arange(0, BLOCK_M)
    row_end = tl.minimum(rb_end * BLOCK_M, M)
    rows = rb_start * BLOCK_M + offs_m
    a, b = _gather_inputs(a_ptr, b_ptr, rows, rows < row_end, stride_am, stride_bm, c, MODE)
    rstd = _row_stats(rstd_ptr, rows, rows < row_end, MODE)
    for rb in range(rb_start, rb_end):
        rows = rb * BLOCK_M + offs_m
        ok_m = rows < M
        nxt = rows + BLOCK_M
        na, nb = _gather_inputs(a_ptr, b_ptr, nxt, nxt < row_end, stride_am, stride_bm, c, MODE)
        nrstd = _row_stats(rstd_ptr, nxt, nxt < row_end, MODE)
        v = _produced(a, b, w, rstd, ok_o, MODE, X_KIND, OUT_KIND, CAST_FIRST, BLOCK_O != N_OUT_C)

        bits = tl.max(tl.max(_abs_bits(v), axis=0), axis=2)  # (BLOCK_M, 1)
        scale = tl.math.div_rn(bits.to(tl.float32, bitcast=True), 127.0)
        q = _round_clamp(v * _safe_inverse(scale)[None, :, :, None], -127, 127, PTX).to(tl.int8)
        rows64 = rows.to(tl.int64)
        tl.store(qo_ptr + (rows64 * stride_qom)[None, :, None, None] + o_cols, q,
                 mask=ok_m[None, :, None, None] & ok_o)
        tl.store(tl.broadcast_to(so_ptr + rows64[None, :, None, None], v.shape), scale[None, :, :, None] + tl.zeros_like(v),
                 mask=ok_m[None, :, None, None] & (o == 0))
        a, b, rstd = na, nb, nrstd


@triton.jit(do_not_specialize=["unit"])
def _quantize_activation_kernel(
    a_ptr, b_ptr, w_ptr, rstd_ptr, perm_ptr, q_ptr, s_ptr, qo_ptr, so_ptr,
    M, K_NORMAL, G, N_OUT, M_BUCKET,
    stride_am, stride_ak, stride_bm, stride_qm, stride_sm, stride_qom, unit,
    stride_sg,  # the scales' group stride (empty_outputs: group-major, M)
    clip_ratio,
    MODE: tl.constexpr,  # the producer in front (atom_ao.ops.producers): RMSNorm, SiLU * up, none
    X_KIND: tl.constexpr,  # the inputs' dtype (producers.KIND)
    OUT_KIND: tl.constexpr,  # the producer's output dtype
    CAST_FIRST: tl.constexpr,  # RMSNorm rounds x * rstd to the input dtype before the weight
    HALF: tl.constexpr,  # group_size // 2
    HALF_P: tl.constexpr,  # HALF rounded up to a power of two
    BLOCK_O: tl.constexpr,  # outlier channels, rounded up to a power of two
    N_OUT_C: tl.constexpr,  # n_outliers (compile-time: tells whether the outlier tile is full)
    COL_MASK: tl.constexpr,  # some half-group tiles have padding (K - n_outliers or HALF off)
    LANES_FIRST: tl.constexpr,  # see _tile_index
    HAS_OUT: tl.constexpr,
    PTX: tl.constexpr,  # compiled for NVIDIA: PTX rounding (the interpreter runs the portable path)
    IDX64: tl.constexpr,  # column offsets need 64 bits
    BLOCK_M: tl.constexpr,
    GPB: tl.constexpr,  # groups per program
    PROGS: tl.constexpr,  # launch about this many programs (used by the grid)
    LANES: tl.constexpr,  # lanes along consecutive channels of a half-group
    PDL: tl.constexpr,  # launched with programmatic dependent launch (launch_streaming's pdl)
    PERM_FIRST: tl.constexpr,  # with PDL: perm loaded before the wait (PERM_BEFORE_WAIT)
):
    # programs: (row split, column), columns inner so that programs running together share
    # rows; a column is GPB groups, or (last, with outliers) the outlier channels. a is x, or
    # RMSNorm's input (w its weight, rstd_ptr its M row statistics), or SiLU's gate (b: up)
    if not PERM_FIRST:
        wait_then_release(PDL)  # before any load or store
    pid = tl.program_id(0)
    n_gb = tl.cdiv(G, GPB)
    # Inductor types a Python float argument fp64 (eager Triton: fp32); fp64 would leak into
    # the math (and break the dots' accumulator type)
    clip_ratio = tl.cast(clip_ratio, tl.float32)
    n_cols = n_gb + HAS_OUT
    n_split = tl.num_programs(0) // n_cols
    pid_r = pid // n_cols
    pid_c = pid % n_cols
    n_rb = tl.cdiv(M, BLOCK_M)
    per = tl.cdiv(n_rb, n_split)
    rb_start = pid_r * per
    rb_end = tl.minimum(rb_start + per, n_rb)

    if pid_c < n_gb:
        _int4_groups(a_ptr, b_ptr, w_ptr, rstd_ptr, perm_ptr, q_ptr, s_ptr, pid_c, rb_start, rb_end, M, K_NORMAL, G,
                     stride_am, stride_ak, stride_bm, stride_qm, stride_sm, stride_sg, unit, clip_ratio,
                     MODE, X_KIND, OUT_KIND, CAST_FIRST, HALF, HALF_P, GPB, BLOCK_M, min(LANES, HALF_P), PTX, IDX64,
                     COL_MASK, LANES_FIRST, PDL, PERM_FIRST)
    elif HAS_OUT:
        _int8_outliers(a_ptr, b_ptr, w_ptr, rstd_ptr, perm_ptr, qo_ptr, so_ptr, rb_start, rb_end, M, K_NORMAL, N_OUT,
                       stride_am, stride_ak, stride_bm, stride_qom, unit, MODE, X_KIND, OUT_KIND, CAST_FIRST,
                       BLOCK_M, BLOCK_O, min(LANES, BLOCK_O), PTX, IDX64, N_OUT_C, LANES_FIRST, PDL, PERM_FIRST)


_TUNE_KEY = ["M_BUCKET", "K_NORMAL", "N_OUT", "HALF", "MODE"]
_tuned_small = triton.autotune(configs=_configs(small=True), key=_TUNE_KEY)(_quantize_activation_kernel)
_tuned_large = triton.autotune(configs=_configs(small=False), key=_TUNE_KEY)(_quantize_activation_kernel)


def _grid(m: int, groups: int, has_out: bool):
    def grid(meta):
        n_cols = triton.cdiv(groups, meta["GPB"]) + int(has_out)
        n_split = max(1, min(triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(meta["PROGS"], n_cols)))
        return (n_split * n_cols,)

    return grid


def check_quantize_args(what: str, x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int,
                        input_name: str = "x") -> None:
    """Clear errors for inputs the quantizer cannot take (also used by the fused quantizers)."""
    if x.dim() != 2:
        raise ValueError(f"{what}: {input_name} must be 2-D (M, K), got shape {tuple(x.shape)}")
    k = x.shape[1]
    if perm.shape != (k,):
        raise ValueError(f"{what}: perm has shape {tuple(perm.shape)}, expected ({k},)")
    if group_size <= 0 or group_size % 2 or not 0 <= n_outliers < k:
        raise ValueError(f"{what}: bad group_size={group_size} / n_outliers={n_outliers} for K={k}")


# the symmetric scales' layout (empty_outputs); False (row-major) is for side-by-side timing
# (bench_generate.py --act-scales); read at each call
GROUP_MAJOR_SCALES = True


def empty_outputs(x: torch.Tensor, n_outliers: int, group_size: int, asymmetric: bool = False):
    """The four output tensors of a quantizer of ``x`` (M, K): packed codes, group scales
    (``[scales | zero points]`` if asymmetric), outlier codes, outlier scales.

    The symmetric scales are (M, G) stored group by group (strides (1, M)): a GEMM program's
    token scales of one group are then contiguous. In the swap GEMM at M = 64 (64x64 tile)
    each thread's 16 token scales sit at immediate offsets of one pointer instead of 16
    pointers: offline 286 -> 241 instructions a group; H200, cold weights, Llama-2-7B (session 27,
    ``explore_decode_gemm.py --scales-ab``): 2-5% faster (qkv 20.0 -> 19.0 us, gate/up 34.3 -> 32.6)."""
    m, k = x.shape
    kp = k_normal_padded(k, n_outliers, group_size)
    dev = x.device
    groups = kp // group_size
    if asymmetric:
        scales = torch.empty((m, 2 * groups), dtype=torch.float32, device=dev)
    elif GROUP_MAJOR_SCALES:
        scales = torch.empty((groups, m), dtype=torch.float32, device=dev).t()
    else:
        scales = torch.empty((m, groups), dtype=torch.float32, device=dev)
    return (torch.empty((m, kp // 2), dtype=torch.uint8, device=dev),
            scales,
            torch.empty((m, n_outliers), dtype=torch.int8, device=dev),
            # no outlier channels: the reference's scale is 0 (and nothing is launched for them)
            (torch.empty if n_outliers else torch.zeros)((m,), dtype=torch.float32, device=dev))


def quantize_activation_triton(
    x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float,
    config: triton.Config | None = None, asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1).

    Same contract as ``quantize_activation_ref``; ``x`` may have any strides. ``config`` (one
    of ``configs_for(m)``) launches that config instead of the autotuner's pick (benchmarks).
    ``asymmetric`` (scales and zero points, ``atom_ao.format``) takes the fused quantizers'
    kernel (``atom_ao.ops.fused_quantize``)."""
    check_quantize_args("quantize_activation", x, perm, n_outliers, group_size)
    if asymmetric:
        from atom_ao.ops import fused_quantize as fq  # it imports this module's building blocks
        if config is not None or x.dtype not in KIND:
            raise ValueError(f"quantize_activation: asymmetric activations need fp16/bf16/fp32 input and no "
                             f"config=, got {x.dtype}")
        return fq.fused_quantize_triton(PLAIN, x, None, None, perm, 0.0, n_outliers, group_size, clip_ratio,
                                        False, x.dtype, asymmetric=True)
    return launch_streaming(PLAIN, x, None, None, None, perm, n_outliers, group_size, clip_ratio, False, x.dtype,
                            config)


# With PDL: each program loads its part of perm before it waits for the kernel that wrote x, so
# that read (from HBM at batch 1: the weight stream of a decode step evicts it from L2) is off
# the chain between the two kernels. perm is a model constant no kernel of a decode step writes.
# RMSNorm's weight is read after the wait: a graph may compute it (Gemma's 1 + weight) in the
# kernel just before. H200, Llama-2-7B batch 1 (session 38, with the weight read early too):
# 2.48 -> 2.47 ms a token, within the spread (results/h200/session38_perm_*). Read at each launch.
PERM_BEFORE_WAIT = os.environ.get("ATOM_AO_PERM_BEFORE_WAIT", "1") == "1"


def perm_before_wait(perm: torch.Tensor, device: torch.device) -> bool:
    """Whether a PDL launch may read ``perm`` before its wait: with PERM_BEFORE_WAIT on, and only
    when perm is passed as the kernel reads it (int32, contiguous, on the device); otherwise the
    launcher converts it first, and that conversion is the kernel just before, which the wait is
    there for."""
    return PERM_BEFORE_WAIT and perm.dtype == torch.int32 and perm.is_contiguous() and perm.device == device


def launch_streaming(mode: int, a, b, w, rstd, perm, n_outliers: int, group_size: int, clip_ratio: float,
                     cast_first: bool, out_dtype: torch.dtype, config: triton.Config | None = None,
                     pdl: bool | None = None):
    """This module's kernel with producer ``mode`` in front: ``a`` = x (PLAIN, or RMSNorm with
    weight ``w`` and the row statistics ``rstd``), or gate (SILU_MUL, ``b`` = up, same column
    stride as ``a``). Arguments are checked by the callers. ``pdl``: programmatic dependent
    launch (sm90+; None: ``atom_ao.ops.pdl``'s switch)."""
    m, k = a.shape
    q, s, qo, so = empty_outputs(a, n_outliers, group_size)
    groups = s.shape[1]
    if m == 0:
        return q, s, qo, so
    reads_perm_early = perm_before_wait(perm, a.device)
    perm = perm.to(device=a.device, dtype=torch.int32).contiguous()
    if mode == SILU_MUL and b.stride(1) != a.stride(1):
        raise ValueError("launch_streaming: gate and up must share their column stride")
    b = a if b is None else b
    has_out = n_outliers > 0
    half = group_size // 2
    kernel = _tuned_small if m <= _SMALL_M else _tuned_large
    meta = {}
    if config is not None:
        kernel = _quantize_activation_kernel
        meta = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    grid = _grid(m, groups, has_out)
    opts = pdl_switch.launch_options(a, pdl, one_token=m == 1)
    wrap_triton(kernel)[grid if config is None else grid(meta)](
        a, b, a if w is None else w, s if rstd is None else rstd, perm, q, s, qo, so,
        m, k - n_outliers, groups, n_outliers, m_bucket(m, 4096),
        a.stride(0), a.stride(1), b.stride(0), q.stride(0), s.stride(0), max(qo.stride(0), 1), 1, s.stride(1),
        float(clip_ratio),
        MODE=mode,
        X_KIND=KIND[a.dtype] if a.dtype in KIND else 0,  # PLAIN reads any float dtype as is
        OUT_KIND=KIND.get(out_dtype, 0),
        CAST_FIRST=bool(cast_first),
        HALF=half,
        HALF_P=triton.next_power_of_2(half),
        BLOCK_O=max(16, triton.next_power_of_2(max(n_outliers, 1))),
        N_OUT_C=n_outliers,
        LANES_FIRST=_LANES_FIRST,
        COL_MASK=(k - n_outliers) % group_size != 0 or half & (half - 1) != 0,
        HAS_OUT=has_out,
        PTX=a.is_cuda and torch.version.hip is None and not _INTERPRET,
        IDX64=(k - 1) * abs(a.stride(1)) >= 2**31,
        **meta, **opts, PERM_FIRST=bool(opts["PDL"] and reads_perm_early),
    )
    return q, s, qo, so


def configs_for(m: int) -> list[triton.Config]:
    """The configs the autotuner chooses among for m rows."""
    return (_tuned_small if m <= _SMALL_M else _tuned_large).configs


@triton_op("atom_ao::quantize_activation", mutates_args=())
def quantize_activation(
    x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float,
    asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, K) -> (packed INT4 normal groups, their per-token scales, INT8 outliers, their scale).

    See ``atom_ao.format`` for the layout (``asymmetric``: the scales are ``[scales | zero
    points]``, (M, 2 G)). CUDA runs the Triton kernel (one pass over ``x``); other devices run
    the reference.
    """
    if x.is_cuda:
        return quantize_activation_triton(x, perm, n_outliers, group_size, clip_ratio, asymmetric=asymmetric)
    check_quantize_args("quantize_activation", x, perm, n_outliers, group_size)
    return quantize_activation_ref(x, perm, n_outliers, group_size, clip_ratio, asymmetric)
