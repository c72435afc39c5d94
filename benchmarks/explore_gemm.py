"""Exploration of W4A4 GEMM kernel variants on the GPU (kept as a record of what was tried).

    python benchmarks/explore_gemm.py

Times, per M, every config of the production kernel and a few variants of the inner loop:
  int8-2dot : production (two INT8 dots per group, K = group/2 each)
  int8-join : the two unpacked halves joined into one K = group dot (same interleave on A and W)
  fp8-2dot  : nibbles converted to FP8 e4m3 (exact for -8..7), FP8 tensor cores, FP32 group sums
Also prints which MMA instructions the compiled kernel uses (wgmma vs mma.sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_us  # noqa: E402

from atom_ao.format import quantize_activation_ref  # noqa: E402
from atom_ao.ops.w4a4_gemm import _GEMM_KERNELS, _w4a4_gemm_kernel_jit, w4a4_gemm_ref  # noqa: E402
from atom_ao.weight import quantize_weight  # noqa: E402


@triton.jit
def _variant_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, out_ptr, M, N, G,
    stride_am, stride_asm, stride_wn, stride_wsn, stride_om,
    HALF: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # normal groups only (the outlier step is the same in every variant)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_k = tl.arange(0, HALF)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :]  # (BLOCK_N, HALF)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, G):
        a = tl.load(a_ptrs, mask=mask_m[:, None], other=0).to(tl.int8, bitcast=True)
        w = tl.load(w_ptrs, mask=mask_n[:, None], other=0).to(tl.int8, bitcast=True)
        a_lo = (a << 4) >> 4
        a_hi = a >> 4
        w_lo = (w << 4) >> 4
        w_hi = w >> 4
        if MODE == 0:
            d = tl.dot(a_lo, tl.trans(w_lo), out_dtype=tl.int32)
            d = tl.dot(a_hi, tl.trans(w_hi), d, out_dtype=tl.int32).to(tl.float32)
        elif MODE == 1:
            a2 = tl.reshape(tl.join(a_lo, a_hi), (BLOCK_M, 2 * HALF))
            w2 = tl.reshape(tl.join(w_lo, w_hi), (BLOCK_N, 2 * HALF))
            d = tl.dot(a2, tl.trans(w2), out_dtype=tl.int32).to(tl.float32)
        else:
            f_alo = a_lo.to(tl.float32).to(tl.float8e4nv)
            f_ahi = a_hi.to(tl.float32).to(tl.float8e4nv)
            f_wlo = w_lo.to(tl.float32).to(tl.float8e4nv)
            f_whi = w_hi.to(tl.float32).to(tl.float8e4nv)
            d = tl.dot(f_alo, tl.trans(f_wlo))
            d = tl.dot(f_ahi, tl.trans(f_whi), d)
        sa = tl.load(as_ptr + offs_m * stride_asm + g, mask=mask_m, other=0.0)
        sw = tl.load(ws_ptr + offs_n * stride_wsn + g, mask=mask_n, other=0.0)
        acc += d * sa[:, None] * sw[None, :]
        a_ptrs += HALF
        w_ptrs += HALF
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(tl.bfloat16),
             mask=mask_m[:, None] & mask_n[None, :])


def main():
    k, n = 4096, 12288
    gs = 128
    perm = torch.randperm(k).to(torch.int32)
    wq = quantize_weight(torch.randn(n, k) * 0.05, perm, 128, gs, clip_ratio=0.9)
    wq = {key: v.cuda() for key, v in wq.items()}
    for m in (1, 16, 256, 4096):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        a = [t.cuda() for t in quantize_activation_ref(x, perm, 128, gs, 0.9)]
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        ref = w4a4_gemm_ref(*[t.cpu() for t in a], *[wq[key].cpu() for key in ("qdata", "scale", "outlier_qdata", "outlier_scale")], None, gs, torch.float32)
        print(f"\n== M={m} N={n} K={k}")
        # every config of the production kernel
        for cfg in [c for tuner in _GEMM_KERNELS.values() for c in tuner.configs]:
            kern = _w4a4_gemm_kernel_jit
            bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)

            def launch():
                return kern[grid](
                    *a, wq["qdata"], wq["scale"], wq["outlier_qdata"], wq["outlier_scale"], a[1], out,
                    m, n, a[1].shape[1], 128, m, a[0].stride(0), a[1].stride(0), a[2].stride(0),
                    wq["qdata"].stride(0), wq["scale"].stride(0), wq["outlier_qdata"].stride(0), out.stride(0),
                    a[1].stride(1), wq["scale"].stride(1),
                    HALF=gs // 2, BLOCK_O=128, HAS_OUT=True, HAS_BIAS=False, USE_ASM=True,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs)
            try:
                us = bench_us(launch)
                err = (out.float().cpu() - ref).abs().max().item() / ref.abs().max().item()
                c = launch()
                mma = "wgmma" if "wgmma" in c.asm["ptx"] else "mma.sync" if "mma.sync" in c.asm["ptx"] else "?"
                print(f"prod {bm}x{bn} w{cfg.num_warps} s{cfg.num_stages}: {us:8.1f} us  {2*m*n*k/us/1e6:7.1f} TOPS  {mma}  relerr {err:.1e}")
            except Exception as e:
                print(f"prod {bm}x{bn}: failed {type(e).__name__}: {str(e)[:100]}")
        for mode, name in ((0, "int8-2dot"), (1, "int8-join"), (2, "fp8-2dot")):
            for bm, bn, w, s in ((16, 64, 4, 4), (64, 128, 4, 4), (128, 128, 8, 3), (128, 256, 8, 3)):
                if bm > max(16, m):
                    continue
                grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))

                def launch():
                    return _variant_kernel[grid](
                        a[0], a[1], wq["qdata"], wq["scale"], out, m, n, a[1].shape[1],
                        a[0].stride(0), a[1].stride(0), wq["qdata"].stride(0), wq["scale"].stride(0), out.stride(0),
                        HALF=gs // 2, MODE=mode, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
                try:
                    us = bench_us(launch)
                    c = launch()
                    mma = "wgmma" if "wgmma" in c.asm["ptx"] else "mma.sync" if "mma.sync" in c.asm["ptx"] else "?"
                    print(f"{name} {bm}x{bn} w{w} s{s}: {us:8.1f} us  {2*m*n*k/us/1e6:7.1f} TOPS  {mma}")
                except Exception as e:
                    print(f"{name} {bm}x{bn}: failed {type(e).__name__}: {str(e)[:100]}")
    # ceilings in the same run
    x = torch.randn(4096, k, dtype=torch.bfloat16, device="cuda")
    wb = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    us = bench_us(lambda: x @ wb.t())
    print(f"\nbf16 cuBLAS 4096x{n}x{k}: {us:.1f} us {2*4096*n*k/us/1e6:.0f} TFLOP/s")
    xi = torch.randint(-8, 8, (4096, k), dtype=torch.int8, device="cuda")
    wi = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")
    us = bench_us(lambda: torch._int_mm(xi, wi.t()))
    print(f"int8 _int_mm 4096x{n}x{k}: {us:.1f} us {2*4096*n*k/us/1e6:.0f} TOPS")


if __name__ == "__main__":
    main()
