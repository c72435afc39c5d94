"""Third GEMM exploration: what bounds the large-M W4A4 GEMM? (record of what was tried)

bench_linear (H200, session 6) showed the path that unpacks both operands to INT8 first
(``atom_ao/ops/w4a4_gemm_unpacked.py``) at ~420 TOPS, no faster than the packed kernel: so the
nibble unpack is not what bounds large M. This times variants of its main loop on INT8 operands
(M=4096, N=12288, K=4096: Llama-2-7B qkv), over a sweep of tiles:
  0 scaled       production: one K = group dot, INT32 -> FP32, times token and row scales
  1 unscaled     the same without the scale multiply (wrong math: what the scaling costs)
  2 scaled-T     scales stored group-major (G, M) and (G, N): contiguous scale loads
  3 int32-acc    one INT32 accumulator over all of K (wrong math: Triton's plain INT8 GEMM)
  4 scaled-2acc  two FP32 accumulators, even / odd groups (two independent dot chains)
  5 scaled-fcvt  0 with the exact int32 -> float32 mantissa trick instead of the conversion
  6 fcvt-pref    5 with the next group's scales loaded one group ahead
  7 unscaled-fcvt 1 with the mantissa trick
  8 skewed       group g's dot issued before group g-1's scaling (hand software-pipelining:
                 does Triton keep the dot in flight while the previous group is scaled?)
  9 tma          5 with the operand tiles loaded through on-device TMA descriptors, 4 warps
 10 tma-ws       9 with Triton's automatic warp specialization (`tl.range(warp_specialize=True)`):
                 a producer warp issues the TMA loads and two consumer warpgroups split the
                 tile's rows, so one can run its MMAs while the other scales its group sums
                 (session 18: on sm_90 Triton 3.9 partitions this loop only with 4 warps and
                 on-device descriptors, `scripts/compile_sm90.py`-style compile: 12 warps,
                 setmaxnreg; not yet timed)
                 Session 19: on the H200's Triton 3.6 the WS form was not usable (the op's WS paths were removed).
and torch._int_mm (cuBLAS INT8) on the same operands. Session 6, H200, M=4096 (TOPS, best tile):
cuBLAS INT8 880, bf16 691; scaled 520 (64x128), unscaled 875, scaled-T 554, int32-acc 1221
(128x128 8 warps), scaled-2acc 281 (out of registers on big tiles): the per-group conversion and
scaling bound the loop, not the loads (results/h200/explore_large_m_v1.log).

    python benchmarks/explore_large_m.py [--modes 5,9,10]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_us, gpu_name  # noqa: E402

M, N, K, GS = 4096, 12288, 4096, 128
TILES = [(128, 256, 8, 3), (128, 128, 8, 3), (128, 128, 8, 4), (64, 128, 4, 3), (64, 128, 4, 4), (64, 256, 8, 3)]
MODES = {0: "scaled", 1: "unscaled", 3: "int32-acc", 5: "scaled-fcvt", 6: "fcvt-pref", 7: "unscaled-fcvt", 8: "skewed",
         9: "tma", 10: "tma-ws"}
# modes 9 and 10: (BLOCK_M, BLOCK_N, warps, stages); the warp specializer takes 4-warp kernels only
TMA_TILES = [(128, 128, 4, 3), (128, 128, 4, 4), (128, 256, 4, 3), (256, 128, 4, 3)]


@triton.jit
def _fcvt(x):
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def _kernel(a_ptr, w_ptr, as_ptr, ws_ptr, out_ptr, M, N, G, s_as, s_ws,
            GS: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = 8 * grid_n
    first_m = (pid // width) * 8
    rows = tl.minimum(grid_m - first_m, 8)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.arange(0, GS)
    a_ptrs = a_ptr + offs_m[:, None] * (G * GS) + k[None, :]
    w_ptrs = w_ptr + offs_n[None, :] * (G * GS) + k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_i = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    if MODE == 9 or MODE == 10:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, G * GS], strides=[G * GS, 1], block_shape=[BLOCK_M, GS])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, G * GS], strides=[G * GS, 1], block_shape=[BLOCK_N, GS])
        for g in tl.range(0, G, warp_specialize=MODE == 10):
            d = tl.dot(a_desc.load([pid_m * BLOCK_M, g * GS]), w_desc.load([pid_n * BLOCK_N, g * GS]).T,
                       out_dtype=tl.int32)
            acc += _fcvt(d) * tl.load(as_ptr + offs_m * s_as + g)[:, None] * tl.load(ws_ptr + offs_n * s_ws + g)[None, :]
    elif MODE == 4:
        for g in range(0, G, 2):
            d0 = tl.dot(tl.load(a_ptrs + g * GS), tl.load(w_ptrs + g * GS), out_dtype=tl.int32)
            d1 = tl.dot(tl.load(a_ptrs + (g + 1) * GS), tl.load(w_ptrs + (g + 1) * GS), out_dtype=tl.int32)
            acc += d0.to(tl.float32) * tl.load(as_ptr + offs_m * s_as + g)[:, None] * tl.load(ws_ptr + offs_n * s_ws + g)[None, :]
            acc2 += d1.to(tl.float32) * tl.load(as_ptr + offs_m * s_as + g + 1)[:, None] * tl.load(ws_ptr + offs_n * s_ws + g + 1)[None, :]
        acc += acc2
    elif MODE == 8:
        d_prev = tl.dot(tl.load(a_ptrs), tl.load(w_ptrs), out_dtype=tl.int32)
        sa = tl.load(as_ptr + offs_m * s_as)
        sw = tl.load(ws_ptr + offs_n * s_ws)
        for g in range(1, G):
            d_cur = tl.dot(tl.load(a_ptrs + g * GS), tl.load(w_ptrs + g * GS), out_dtype=tl.int32)
            sa_n = tl.load(as_ptr + offs_m * s_as + g)
            sw_n = tl.load(ws_ptr + offs_n * s_ws + g)
            acc += _fcvt(d_prev) * sa[:, None] * sw[None, :]
            d_prev, sa, sw = d_cur, sa_n, sw_n
        acc += _fcvt(d_prev) * sa[:, None] * sw[None, :]
    elif MODE == 6:
        sa = tl.load(as_ptr + offs_m * s_as)
        sw = tl.load(ws_ptr + offs_n * s_ws)
        for g in range(0, G):
            nxt = tl.minimum(g + 1, G - 1)
            sa_n = tl.load(as_ptr + offs_m * s_as + nxt)
            sw_n = tl.load(ws_ptr + offs_n * s_ws + nxt)
            d = tl.dot(tl.load(a_ptrs + g * GS), tl.load(w_ptrs + g * GS), out_dtype=tl.int32)
            acc += _fcvt(d) * sa[:, None] * sw[None, :]
            sa, sw = sa_n, sw_n
    else:
        for g in range(0, G):
            a = tl.load(a_ptrs + g * GS)
            w = tl.load(w_ptrs + g * GS)
            if MODE == 3:
                acc_i = tl.dot(a, w, acc_i, out_dtype=tl.int32)
            elif MODE == 5:
                d = _fcvt(tl.dot(a, w, out_dtype=tl.int32))
                acc += d * tl.load(as_ptr + offs_m * s_as + g)[:, None] * tl.load(ws_ptr + offs_n * s_ws + g)[None, :]
            elif MODE == 7:
                acc += _fcvt(tl.dot(a, w, out_dtype=tl.int32))
            else:
                d = tl.dot(a, w, out_dtype=tl.int32).to(tl.float32)
                if MODE == 0:
                    acc += d * tl.load(as_ptr + offs_m * s_as + g)[:, None] * tl.load(ws_ptr + offs_n * s_ws + g)[None, :]
                elif MODE == 2:  # group-major scales
                    acc += d * tl.load(as_ptr + g * M + offs_m)[:, None] * tl.load(ws_ptr + g * N + offs_n)[None, :]
                else:
                    acc += d
        if MODE == 3:
            acc = acc_i.to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16))


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default=",".join(map(str, MODES)), help="which loop variants (numbers above)")
    modes = [int(x) for x in ap.parse_args().modes.split(",")]
    g = K // GS
    a = torch.randint(-8, 8, (M, K), dtype=torch.int8, device="cuda")
    w = torch.randint(-8, 8, (N, K), dtype=torch.int8, device="cuda")
    sa, sw = torch.rand(M, g, device="cuda"), torch.rand(N, g, device="cuda")
    sa_t, sw_t = sa.t().contiguous(), sw.t().contiguous()
    out = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
    ops = 2.0 * M * N * K
    # on-device TMA descriptors (modes 9, 10) take their scratch from this allocator
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    want = None  # mode 5's output: modes 9 and 10 do the same sums in the same order
    print(f"{gpu_name()}  M={M} N={N} K={K}")
    print(f"torch._int_mm (cuBLAS INT8): {ops / bench_us(lambda: torch._int_mm(a, w.t())) / 1e6:.0f} TOPS")
    bf = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
    wb = torch.randn(N, K, dtype=torch.bfloat16, device="cuda")
    print(f"bf16 F.linear: {ops / bench_us(lambda: torch.nn.functional.linear(bf, wb)) / 1e6:.0f} TFLOPS")
    for mode in modes:
        name = MODES[mode]
        res = []
        for bm, bn, warps, stages in (TMA_TILES if mode in (9, 10) else TILES):
            s_a, s_w = (sa_t, sw_t) if mode == 2 else (sa, sw)
            grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)

            def fn():
                _kernel[grid](a, w, s_a, s_w, out, M, N, g, g, g, GS=GS, MODE=mode, BLOCK_M=bm, BLOCK_N=bn,
                              num_warps=warps, num_stages=stages)
            try:
                fn()
                if mode == 5 and want is None:
                    want = out.clone()
                wrong = mode in (9, 10) and want is not None and bool((out.float() - want.float()).abs().max() > 1e-2 * want.float().abs().max())
                res.append(f"{bm}x{bn}w{warps}s{stages} {ops / bench_us(fn) / 1e6:.0f}{' WRONG' if wrong else ''}")
            except Exception as e:  # out of shared memory, registers
                res.append(f"{bm}x{bn}w{warps}s{stages} fail({type(e).__name__})")
        print(f"{name:12s} " + " | ".join(res), flush=True)


if __name__ == "__main__":
    main()
