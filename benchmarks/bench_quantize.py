"""The activation quantizers against the copy bandwidth: memory-bound kernels, so bytes / time.

    python benchmarks/bench_quantize.py [--ms 1,16,64,256,1024,4096,8192] [--ks 4096,11008,14336] [--random-perm]

For each K (a linear's input width) and M (tokens), bf16 activations with a few loud channels:
``quantize_activation`` (gather by the permutation, INT4 normal groups + INT8 outliers + scales),
``rmsnorm_quantize`` (the same after RMSNorm: its row statistics computed first, a second read of
x), ``rmsnorm_quantize (rstd given)`` (as a compiled model calls it: the statistics come from the
kernel that produced x, one read) and ``silu_mul_quantize`` (silu(gate) * up then quantize: reads
two inputs). Bytes = what the op must read and write (inputs, packed codes,
outliers, float32 scales). Columns: time, GB/s, % of this GPU's copy rate measured at start-up
(1 GiB, read + write: the ceiling for a large memory-bound kernel), and the time of a plain copy
of the same input bytes (``clone``: what a pass over x costs at that size, launch included).
The issue's target: >= 80% of the copy rate where the op is memory-bound (large M).

Permutations are the ones models get: ``outlier_permutation`` (normal channels in their order,
the 128 outliers at the end) for the two quantizers of a linear's input, and the identity for
``silu_mul_quantize`` (``fold_mlp_permutations`` moves down_proj's permutation into gate/up).
``--random-perm`` times every op with a random permutation instead (the gathers' worst case:
every lane of a warp reads its own 32-byte sector); session 9's first run used that by mistake.
Writes JSON + markdown (bench_quantize_<gpu>) under the results folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_us, gpu_name, markdown_table, measured_copy_bytes_per_s, write_results  # noqa: E402

N_OUT, GS, CLIP = 128, 128, 0.9
DEVICE = "cuda"


def out_bytes(m: int, k: int) -> int:
    groups = (k - N_OUT) // GS
    return m * ((k - N_OUT) // 2 + N_OUT + 4 * groups + 4)


def main():
    import atom_ao  # noqa: F401  (registers the ops)

    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,64,256,1024,4096,8192")
    ap.add_argument("--ks", default="4096,11008,14336")
    ap.add_argument("--random-perm", action="store_true", help="random permutations (the worst case)")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    from atom_ao.weight import outlier_permutation
    copy_bps = measured_copy_bytes_per_s()
    print(f"{gpu_name()}: copy {copy_bps / 1e12:.2f} TB/s (read + write)")
    ops = torch.ops.atom_ao
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        g = torch.Generator().manual_seed(k)
        if args.random_perm:
            perm = mlp_perm = torch.randperm(k, generator=g).to(torch.int32).to(DEVICE)
        else:
            perm = outlier_permutation(torch.rand(k, generator=g), N_OUT).to(DEVICE)
            mlp_perm = torch.arange(k, dtype=torch.int32, device=DEVICE)
        weight = (torch.rand(k, generator=g) + 0.5).to(DEVICE, torch.bfloat16)
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, generator=g)
            x[:, :8] *= 60
            x = x.to(DEVICE, torch.bfloat16)
            up = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
            rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
            cases = {
                "quantize_activation": (lambda: ops.quantize_activation(x, perm, N_OUT, GS, CLIP), 2 * m * k),
                "rmsnorm_quantize": (lambda: ops.rmsnorm_quantize(x, weight, 1e-6, perm, N_OUT, GS, CLIP), 2 * m * k + 2 * k),
                "rmsnorm_quantize (rstd given)": (
                    lambda: ops.rmsnorm_quantize(x, weight, 1e-6, perm, N_OUT, GS, CLIP, False, False, rstd),
                    2 * m * k + 2 * k + 4 * m),
                "silu_mul_quantize": (lambda: ops.silu_mul_quantize(x, up, mlp_perm, N_OUT, GS, CLIP), 4 * m * k),
            }
            copy_us = bench_us(lambda: x.clone())
            for name, (fn, in_bytes) in cases.items():
                us = bench_us(fn)
                nbytes = in_bytes + out_bytes(m, k)
                rows.append({"op": name, "K": k, "M": m, "us": round(us, 2), "GB/s": round(nbytes / us / 1e3, 1),
                             "copy_pct": round(100 * nbytes / (us * 1e-6) / copy_bps, 1),
                             "clone_us": round(copy_us, 2)})
                r = rows[-1]
                print(f"{name:<29} K={k:<6} M={m:<5} {r['us']:>9} us {r['GB/s']:>8} GB/s {r['copy_pct']:>6}% of copy"
                      f"  (clone of x: {r['clone_us']} us)", flush=True)
    cols = ["op", "K", "M", "us", "GB/s", "copy_pct", "clone_us"]
    stem = write_results("bench_quantize" + args.tag, rows, cols,
                         {"copy_bytes_per_s": copy_bps, "random_perm": args.random_perm})
    print(markdown_table(rows, cols))
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
