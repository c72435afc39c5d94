"""The activation quantizers, kernel by kernel and config by config.

    python benchmarks/explore_quantize.py [--ms 1,64,1024,8192] [--ks 4096,11008] [--no-configs] [--all-configs]

For each K and M (bf16 activations, the permutation ``outlier_permutation`` builds, 128
outliers, groups of 128; identity for silu_mul_quantize, as after fold_mlp_permutations): each
of the three quantizers on the streaming kernel (``quantize_activation``'s: programs walk their
rows, the next row block's gathers in flight) and on the tile kernel (one program per row block
and column, ``atom_ao.ops.fused_quantize``), both autotuned and checked against the reference;
then, for prefill sizes, every config of ``quantize_activation`` on its own. Time, % of this
GPU's copy rate (bytes as in bench_quantize) and a ``clone`` of x. Writes JSON + markdown
(explore_quantize_<gpu>) under the results folder.
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

DEVICE = "cuda"


def compare_codes(a, b) -> str:
    """'' if two quantizers' outputs agree up to rare boundary flips, else what differs. A
    fused producer's float32 value may differ from the reference's by an ulp (sum order, exp):
    codes within 1 on at most 0.5% of them, scales within float32 rounding except at most 0.5%
    within two bf16 ulps (RMSNorm rounds to bf16 before the group max: tests/ops/fused_compare.py)."""
    from atom_ao.format import unpack_int4
    d = (unpack_int4(a[0], GS).int() - unpack_int4(b[0], GS).int()).abs()
    if d.numel() and (d.max() > 1 or (d > 0).float().mean() > 0.005):
        return f"codes: max diff {d.max().item()}, {(d > 0).float().mean().item():.3%} differ"
    for i, name in ((1, "scales"), (3, "outlier scales")):
        off = ~torch.isclose(a[i], b[i], rtol=1e-5, atol=0, equal_nan=True)
        if off.any():
            rel = ((a[i][off] - b[i][off]).abs() / b[i][off].abs()).max().item()
            if off.float().mean() > 0.005 or rel > 2 * 2**-7 * 1.01:
                return f"{name}: {off.float().mean().item():.3%} differ, by up to {rel:.2%}"
    return ""


def config_name(c) -> str:
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['GPB']}x{k['LANES']} w{c.num_warps} progs {k['PROGS']}"


def main():
    import importlib

    import atom_ao  # noqa: F401
    from atom_ao.weight import outlier_permutation

    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,64,1024,8192")
    ap.add_argument("--ks", default="4096,11008")
    ap.add_argument("--no-configs", action="store_true", help="skip the per-config timings")
    ap.add_argument("--all-configs", action="store_true",
                    help="time the decode configs and the prefill ones at every M above 32")
    args = ap.parse_args()
    from atom_ao.format import quantize_activation_ref
    from atom_ao.ops.rmsnorm_quantize import rmsnorm_quantize_ref, rmsnorm_quantize_triton
    from atom_ao.ops.silu_mul_quantize import silu_mul_quantize_ref, silu_mul_quantize_triton
    fq = importlib.import_module("atom_ao.ops.fused_quantize")
    copy_bps = measured_copy_bytes_per_s()
    print(f"{gpu_name()}: copy {copy_bps / 1e12:.2f} TB/s (read + write)")
    rows, mismatches = [], []
    for k in (int(v) for v in args.ks.split(",")):
        g = torch.Generator().manual_seed(k)
        perm = outlier_permutation(torch.rand(k, generator=g), N_OUT).to(DEVICE)
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, generator=g)
            x[:, :8] *= 60
            x = x.to(DEVICE, torch.bfloat16)
            up = torch.randn(m, k, generator=g).to(DEVICE, torch.bfloat16)
            weight = (torch.rand(k, generator=g) + 0.5).to(DEVICE, torch.bfloat16)
            ident = torch.arange(k, dtype=torch.int32, device=DEVICE)
            nbytes = 2 * m * k + out_bytes(m, k)
            ops = {
                "quantize_activation": (
                    lambda kern: (qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP) if kern == "stream" else
                                  fq.fused_quantize_triton(fq.PLAIN, x, None, None, perm, 0.0, N_OUT, GS, CLIP, False,
                                                           x.dtype, kernel="tile")),
                    lambda: quantize_activation_ref(x, perm, N_OUT, GS, CLIP), nbytes),
                "rmsnorm_quantize": (
                    lambda kern: rmsnorm_quantize_triton(x, weight, 1e-6, perm, N_OUT, GS, CLIP, True, kernel=kern),
                    lambda: rmsnorm_quantize_ref(x, weight, 1e-6, perm, N_OUT, GS, CLIP, True), nbytes + 2 * k),
                "silu_mul_quantize": (
                    lambda kern: silu_mul_quantize_triton(x, up, ident, N_OUT, GS, CLIP, kernel=kern),
                    lambda: silu_mul_quantize_ref(x, up, ident, N_OUT, GS, CLIP), nbytes + 2 * m * k),
            }
            times = {"clone of x": (bench_us(lambda: x.clone()), 4 * m * k)}
            for op, (fn, ref, op_bytes) in ops.items():
                want = ref()
                for kern in fq.KERNELS:
                    diff = compare_codes(fn(kern), want)
                    if diff:  # reported, not fatal
                        print(f"!! {op} on the {kern} kernel differs from the reference beyond rounding flips: {diff}")
                        mismatches.append(f"K={k} M={m} {op} {kern}: {diff}")
                    times[f"{op}, {kern} kernel"] = (bench_us(lambda fn=fn, kern=kern: fn(kern)), op_bytes)
            want = qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP)
            every = qa._configs(small=True) + qa._configs(small=False) if args.all_configs else qa.configs_for(m)
            for c in ([] if args.no_configs or m <= 32 else every):
                got = qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP, config=c)
                assert all(torch.equal(a, b) for a, b in zip(got, want)), config_name(c)  # same bits, any config
                times["quantize_activation " + config_name(c)] = (
                    bench_us(lambda c=c: qa.quantize_activation_triton(x, perm, N_OUT, GS, CLIP, config=c)), nbytes)
            for name, (us, moved) in times.items():
                rows.append({"K": k, "M": m, "config": name, "us": round(us, 2),
                             "copy_pct": round(100 * moved / (us * 1e-6) / copy_bps, 1)})
                print(f"K={k:<6} M={m:<5} {name:<60} {us:9.2f} us {rows[-1]['copy_pct']:6.1f}% of copy", flush=True)
    cols = ["K", "M", "config", "us", "copy_pct"]
    stem = write_results("explore_quantize", rows, cols, {"copy_bytes_per_s": copy_bps, "mismatches": mismatches})
    print(markdown_table(rows, cols))
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
