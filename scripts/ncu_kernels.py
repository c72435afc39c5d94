"""One launch of each hot decode kernel for Nsight Compute: where their time goes (stall reasons,
occupancy, bandwidth), which timing alone cannot say.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section SchedulerStats --section LaunchStats \\
        python3 scripts/ncu_kernels.py [--cases gqa,gqa-planes,mha,mha-planes,gemm-m1,gemv-m1,gemm-m64,bf16-m1]

Every case runs once outside the profiled range first (Triton compiles and autotunes there), then
once between cudaProfilerStart / Stop: ncu profiles those launches only (its replays flush the
caches, so weights and caches come from HBM as in a model). Shapes: decode attention at batch 64,
context 8192 (Llama-3-8B heads for GQA, Llama-2-7B's for MHA; pages of 64, shuffled; "-planes":
the one-warp planes kernel, else the generic one-warp kernel / ``kv_decode_mha``); the W4A4
swap GEMM (and at M = 1 the dp4a gemv) and bf16 ``F.linear`` on Llama-2-7B's gate/up (4096 -> 22016).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_attention import MODELS, make_int4  # noqa: E402


def attention_case(model, b, ctx, planes):
    import atom_ao.ops.kv_decode_attention as dec

    h, hkv, d = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(0)
    cache = make_int4(b, ctx, hkv, d, g)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=g)

    def run():
        dec.ONE_WARP_PLANES = dec.MHA_PLANES = planes
        torch.ops.atom_ao.kv_decode_attention(q, *cache, None, d ** -0.5, ctx)
    return run


def gemm_case(m, k=4096, n=22016, path="swap"):
    import atom_ao
    from torchao.quantization import quantize_

    gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")
    lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_ao.atom_config())
    w = lin.weight
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[:, :8] *= 60
    a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
    return lambda: gemm.w4a4_gemm_triton(*a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None,
                                          w.group_size, x.dtype, path=path)


def bf16_case(m, k=4096, n=22016):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    wt = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    return lambda: torch.nn.functional.linear(x, wt)


CASES = {
    "gqa": lambda: attention_case("llama3-8b", 64, 8192, False),
    "gqa-planes": lambda: attention_case("llama3-8b", 64, 8192, True),
    "mha": lambda: attention_case("llama2-7b", 64, 8192, False),
    "mha-planes": lambda: attention_case("llama2-7b", 64, 8192, True),
    "gemm-m1": lambda: gemm_case(1),
    "gemv-m1": lambda: gemm_case(1, path="gemv"),
    "gemm-m64": lambda: gemm_case(64),
    "bf16-m1": lambda: bf16_case(1),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    runs = []
    for name in args.cases.split(","):
        fn = CASES[name]()
        fn()  # compile and autotune, unprofiled
        torch.cuda.synchronize()
        runs.append((name, fn))
    for name, fn in runs:
        print(f"=== case {name}", flush=True)
        torch.cuda.cudart().cudaProfilerStart()
        fn()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
