"""``quantize_activation`` at prefill sizes, config by config: which tile shape and which
prefetch (none, into L1, into L2) the bytes need.

    python benchmarks/explore_quantize.py [--ms 1024,8192] [--ks 4096,11008]

For each K and M (bf16 activations, the permutation ``outlier_permutation`` builds, 128
outliers, groups of 128): every config of the autotuner's list launched on its own, then the
autotuner's pick; time, % of this GPU's copy rate (bytes as in bench_quantize) and the plain
``clone`` of x. Writes JSON + markdown (explore_quantize_<gpu>) under the results folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quantize import CLIP, GS, N_OUT, out_bytes  # noqa: E402
from common import bench_us, gpu_name, markdown_table, measured_copy_bytes_per_s, write_results  # noqa: E402


def config_name(c) -> str:
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['GPB']}x{k['LANES']} w{c.num_warps} progs {k['PROGS']} pf {k['PF']}/{k['PF_DIST']}"


def main():
    import importlib

    import atom_ao  # noqa: F401
    from atom_ao.weight import outlier_permutation

    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1024,8192")
    ap.add_argument("--ks", default="4096,11008")
    args = ap.parse_args()
    copy_bps = measured_copy_bytes_per_s()
    print(f"{gpu_name()}: copy {copy_bps / 1e12:.2f} TB/s (read + write)")
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        g = torch.Generator().manual_seed(k)
        perm = outlier_permutation(torch.rand(k, generator=g), N_OUT).cuda()
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, generator=g)
            x[:, :8] *= 60
            x = x.to("cuda", torch.bfloat16)
            nbytes = 2 * m * k + out_bytes(m, k)
            want = qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP)
            times = {"clone of x": bench_us(lambda: x.clone()),
                     "autotuned": bench_us(lambda: qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP))}
            for c in qa.configs_for(m):
                got = qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP, config=c)
                assert all(torch.equal(a, b) for a, b in zip(got, want)), config_name(c)  # same bits, any config
                times[config_name(c)] = bench_us(lambda c=c: qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP,
                                                                                           config=c))
            for name, us in times.items():
                moved = 4 * m * k if name == "clone of x" else nbytes
                rows.append({"K": k, "M": m, "config": name, "us": round(us, 2),
                             "copy_pct": round(100 * moved / (us * 1e-6) / copy_bps, 1)})
                print(f"K={k:<6} M={m:<5} {name:<40} {us:9.2f} us {rows[-1]['copy_pct']:6.1f}% of copy", flush=True)
    cols = ["K", "M", "config", "us", "copy_pct"]
    stem = write_results("explore_quantize", rows, cols, {"copy_bytes_per_s": copy_bps})
    print(markdown_table(rows, cols))
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
