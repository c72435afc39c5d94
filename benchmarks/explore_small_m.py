"""Small-M W4A4 GEMM on the GPU: the tile kernel against the swap-AB kernel, by split and by config.

    python benchmarks/explore_small_m.py [--ms 2,8,16,32,64] [--shapes "llama2-7b qkv,llama2-7b o"]

For each shape and M, GEMM alone (operands quantized once): bf16 ``F.linear``; ``tiles`` (the
tile kernel, tokens on the MMA's M side, its own split-K); ``swap`` (weight rows on the M side,
``w4a4_gemm_swap``) with its default split and with each split forced; and each swap config of
the M regime on its own (default split). Prints a table per shape and M; writes JSON + markdown
(explore_small_m_<gpu>) under the results folder. Used to set the swap kernel's configs, its
split-K rule and the M range it takes over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_linear import SHAPES  # noqa: E402
from common import bench_us, markdown_table, measured_copy_bytes_per_s, write_results  # noqa: E402

from atom_ao.ops.gemm_tiles import splits_fit  # noqa: E402


def main():
    import importlib

    import atom_ao

    gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")
    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="2,8,16,32,64")
    ap.add_argument("--shapes", default="llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down,llama2-70b o")
    args = ap.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    copy_bps = measured_copy_bytes_per_s()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for label in args.shapes.split(","):
        k, n = SHAPES[label]
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        base_w = lin.weight.detach().clone()
        from torchao.quantization import quantize_

        quantize_(lin, atom_ao.atom_config())
        w = lin.weight
        wbytes = w.qdata.numel() + w.outlier_qdata.numel() + 4 * (w.scale.numel() + w.outlier_scale.numel())
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, :8] *= 60
            a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
            gargs = (*a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None, w.group_size, x.dtype)
            groups = a[1].shape[1]
            times = {"bf16": bench_us(lambda: F.linear(x, base_w))}
            times["tiles"] = bench_us(lambda: gemm.w4a4_gemm_triton(*gargs, path="packed"))
            default = swap.swap_split_k(m, n, groups, sms)
            times[f"swap (split {default})"] = bench_us(lambda: gemm.w4a4_gemm_triton(*gargs, path="swap"))
            for s in (1, 2, 4, 8, 16):
                if s != default and splits_fit(groups, s):
                    times[f"swap split {s}"] = bench_us(lambda: gemm.w4a4_gemm_triton(*gargs, path="swap", splits=s))
            regime = min(r for r in swap._SWAP_REGIMES if m <= r)
            real = swap.swap_kernel_and_meta
            for bn, bm, nw, st in swap._SWAP_REGIMES[regime]:
                fixed = {"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": nw, "num_stages": st}
                gemm.swap_kernel_and_meta = lambda _m, fixed=fixed: (swap._w4a4_gemm_swap_kernel_jit, fixed)
                try:
                    times[f"swap {bn}x{bm} w{nw} s{st}"] = bench_us(lambda: gemm.w4a4_gemm_triton(*gargs, path="swap"))
                finally:
                    gemm.swap_kernel_and_meta = real
            floor_us = (wbytes + 2 * m * n) / copy_bps * 1e6  # bytes moved at the copy's rate (read + write)
            for name, us in times.items():
                rows.append({"shape": label, "M": m, "path": name, "us": round(us, 2),
                             "vs_bf16": round(times["bf16"] / us, 2), "vs_tiles": round(times["tiles"] / us, 2),
                             "bytes_floor_pct": None if name == "bf16" else round(100 * floor_us / us, 1)})
            print(markdown_table([r for r in rows if r["shape"] == label and r["M"] == m],
                                 ["shape", "M", "path", "us", "vs_bf16", "vs_tiles", "bytes_floor_pct"]).split("\n", 2)[-1],
                  flush=True)
    write_results("explore_small_m", rows, ["shape", "M", "path", "us", "vs_bf16", "vs_tiles", "bytes_floor_pct"],
                  {"copy_bytes_per_s": copy_bps})

if __name__ == "__main__":
    main()
