"""Second GEMM exploration: is the group loop software-pipelined? (record of what was tried)

explore_gemm.py showed ~50 us for M=1 (N=12288, K=4096: 25 MB of weights, ~8 us at copy speed)
whatever the tile: ~1.6 us per group iteration, i.e. one memory latency per iteration. The
loads feed the dots through the nibble shifts, which may keep Triton's pipeliner off them.
Variants (normal groups only):
  0 plain loop                         3 two groups per iteration + prefetch of the next pair
  1 tl.range(num_stages=STAGES)        4 control: bytes straight into the dot (wrong math,
  2 manual prefetch of the next group    shows what a pipelined loop costs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_us  # noqa: E402


@triton.jit
def _group_dot(a, w, sa, sw, acc):
    a = a.to(tl.int8, bitcast=True)
    w = w.to(tl.int8, bitcast=True)
    d = tl.dot((a << 4) >> 4, tl.trans((w << 4) >> 4), out_dtype=tl.int32)
    d = tl.dot(a >> 4, tl.trans(w >> 4), d, out_dtype=tl.int32)
    return acc + d.to(tl.float32) * sa[:, None] * sw[None, :]


@triton.jit
def _kernel(a_ptr, as_ptr, w_ptr, ws_ptr, out_ptr, M, N, G, stride_am, stride_asm, stride_wn, stride_wsn,
            HALF: tl.constexpr, MODE: tl.constexpr, STAGES: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < M
    mn = offs_n < N
    offs_k = tl.arange(0, HALF)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]
    as_ptrs = as_ptr + offs_m * stride_asm
    ws_ptrs = ws_ptr + offs_n * stride_wsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if MODE == 0:
        for g in range(0, G):
            acc = _group_dot(tl.load(a_ptrs + g * HALF, mask=mm[:, None], other=0),
                             tl.load(w_ptrs + g * HALF, mask=mn[:, None], other=0),
                             tl.load(as_ptrs + g, mask=mm, other=0.0), tl.load(ws_ptrs + g, mask=mn, other=0.0), acc)
    elif MODE == 1:
        for g in tl.range(0, G, num_stages=STAGES):
            acc = _group_dot(tl.load(a_ptrs + g * HALF, mask=mm[:, None], other=0),
                             tl.load(w_ptrs + g * HALF, mask=mn[:, None], other=0),
                             tl.load(as_ptrs + g, mask=mm, other=0.0), tl.load(ws_ptrs + g, mask=mn, other=0.0), acc)
    elif MODE == 2:
        a = tl.load(a_ptrs, mask=mm[:, None], other=0)
        w = tl.load(w_ptrs, mask=mn[:, None], other=0)
        sa = tl.load(as_ptrs, mask=mm, other=0.0)
        sw = tl.load(ws_ptrs, mask=mn, other=0.0)
        for g in range(1, G + 1):
            more_m = mm & (offs_m * 0 + g < G)  # tensor-shaped masks (the interpreter wants them)
            more_n = mn & (offs_n * 0 + g < G)
            a_n = tl.load(a_ptrs + g * HALF, mask=more_m[:, None], other=0)
            w_n = tl.load(w_ptrs + g * HALF, mask=more_n[:, None], other=0)
            sa_n = tl.load(as_ptrs + g, mask=more_m, other=0.0)
            sw_n = tl.load(ws_ptrs + g, mask=more_n, other=0.0)
            acc = _group_dot(a, w, sa, sw, acc)
            a, w, sa, sw = a_n, w_n, sa_n, sw_n
    elif MODE == 3:
        a0 = tl.load(a_ptrs, mask=mm[:, None], other=0)
        w0 = tl.load(w_ptrs, mask=mn[:, None], other=0)
        a1 = tl.load(a_ptrs + HALF, mask=(mm & (offs_m * 0 + 1 < G))[:, None], other=0)
        w1 = tl.load(w_ptrs + HALF, mask=(mn & (offs_n * 0 + 1 < G))[:, None], other=0)
        for g in range(2, G + 2, 2):
            m2, n2 = mm & (offs_m * 0 + g < G), mn & (offs_n * 0 + g < G)
            m3, n3 = mm & (offs_m * 0 + g + 1 < G), mn & (offs_n * 0 + g + 1 < G)
            m1, n1 = mm & (offs_m * 0 + g - 1 < G), mn & (offs_n * 0 + g - 1 < G)
            a2 = tl.load(a_ptrs + g * HALF, mask=m2[:, None], other=0)
            w2 = tl.load(w_ptrs + g * HALF, mask=n2[:, None], other=0)
            a3 = tl.load(a_ptrs + (g + 1) * HALF, mask=m3[:, None], other=0)
            w3 = tl.load(w_ptrs + (g + 1) * HALF, mask=n3[:, None], other=0)
            acc = _group_dot(a0, w0, tl.load(as_ptrs + g - 2, mask=mm, other=0.0),
                             tl.load(ws_ptrs + g - 2, mask=mn, other=0.0), acc)
            acc = _group_dot(a1, w1, tl.load(as_ptrs + g - 1, mask=m1, other=0.0),
                             tl.load(ws_ptrs + g - 1, mask=n1, other=0.0), acc)
            a0, w0, a1, w1 = a2, w2, a3, w3
    else:
        for g in range(0, G):
            a = tl.load(a_ptrs + g * HALF, mask=mm[:, None], other=0).to(tl.int8, bitcast=True)
            w = tl.load(w_ptrs + g * HALF, mask=mn[:, None], other=0).to(tl.int8, bitcast=True)
            d = tl.dot(a, tl.trans(w), out_dtype=tl.int32)
            sa = tl.load(as_ptrs + g, mask=mm, other=0.0)
            sw = tl.load(ws_ptrs + g, mask=mn, other=0.0)
            acc += d.to(tl.float32) * sa[:, None] * sw[None, :]
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.bfloat16), mask=mm[:, None] & mn[None, :])


def main():
    k, n, gs = 4096, 12288, 128
    g = (k - 128) // gs + 1
    w = torch.randint(0, 256, (n, g * gs // 2), dtype=torch.uint8, device="cuda")
    ws = torch.rand(n, g, device="cuda")
    for m in (1, 16, 4096):
        a = torch.randint(0, 256, (m, g * gs // 2), dtype=torch.uint8, device="cuda")
        as_ = torch.rand(m, g, device="cuda")
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        ref = None
        print(f"\n== M={m} N={n} K={k}: weight bytes {w.numel() / 1e6:.1f} MB, copy-speed floor {w.numel() / 3e12 * 1e6:.1f} us")
        tiles = [(16, 64, 4), (16, 128, 4)] if m <= 16 else [(64, 128, 4), (128, 128, 8), (128, 256, 8)]
        for mode in range(5):
            for bm, bn, nw in tiles:
                for stages in (3, 4):
                    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))

                    def launch():
                        return _kernel[grid](a, as_, w, ws, out, m, n, g, a.stride(0), as_.stride(0), w.stride(0),
                                             ws.stride(0), HALF=gs // 2, MODE=mode, STAGES=stages,
                                             BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=stages)
                    try:
                        us = bench_us(launch)
                        if mode < 4:
                            ref = out.clone() if ref is None else ref
                            ok = torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=1e-2 * ref.float().abs().max().item())
                        else:
                            ok = "-"
                        print(f"mode {mode} {bm}x{bn} w{nw} s{stages}: {us:8.1f} us {2*m*n*k/us/1e6:7.1f} TOPS "
                              f"{w.numel() / us / 1e6:6.0f} GB/s(w)  same={ok}")
                    except Exception as e:
                        print(f"mode {mode} {bm}x{bn} s{stages}: failed {type(e).__name__}: {str(e)[:150]}")


if __name__ == "__main__":
    main()
