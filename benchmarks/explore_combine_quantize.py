"""The decode split combine fused with o_proj's quantizer (``atom_ao::combine_quantize``) against
the two kernels it replaces (the decode reduce kernel, then ``quantize_activation``), alone.

A batch-1 decode step runs this pair once a layer on the split kernel's partials (B, H, S, D).
Each timed replay (a CUDA graph) is ``--layers`` launches of one form on random partials with a
few 50x channels, Llama-2/3-7B/8B's o_proj input (32 heads x 128 = 4096 channels, 128 outliers,
groups of 128). Variants of the fused kernel: the tile's channels along the lanes or along the
splits (``CHANNELS_ON_LANES``), warps a program, splits a step (``SPLIT_CHUNK``); each with PDL
off and with its default (one-token launches). Every variant's codes are checked against the
unfused kernels' first (rounding-boundary flips only, as the tests allow).

    python benchmarks/explore_combine_quantize.py [--splits 20,33,64,128] [--layers 32]

Writes JSON + markdown (explore_combine_quantize_<gpu>).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_us, gpu_name, markdown_table, write_results  # noqa: E402

COLUMNS = ["splits", "pdl", "variant", "us_per_layer", "vs_unfused", "codes_off"]
HEADS, D, N_OUT, GS = 32, 128, 128, 128


def partials(splits: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(1, HEADS, splits, generator=g) * 3
    l_s = 1 + torch.rand(1, HEADS, splits, generator=g) * 30
    part = torch.randn(1, HEADS, splits, D, generator=g) * l_s[..., None]
    part[..., torch.randperm(D, generator=g)[:3]] *= 50
    return part.cuda(), torch.stack([m, l_s], dim=-1).cuda()


def unfused(part, ml, perm, pdl: bool):
    """The reduce kernel's launch as ``kv_decode_attention_triton`` makes it, then the quantizer."""
    from atom_ao.ops import kv_decode_attention as dec
    from atom_ao.ops.quantize_activation import quantize_activation_triton

    b, h, splits, d = part.shape
    out = torch.empty((b, h, d), dtype=torch.bfloat16, device=part.device)
    dec._decode_reduce_kernel[(b * h,)](part, ml, out, h, splits, out.stride(0), out.stride(1), D=d,
                                        SPLITS_P=triton.next_power_of_2(splits), num_warps=4, PDL=pdl,
                                        **({"launch_pdl": True} if pdl else {}))
    return quantize_activation_triton(out.view(b, h * d), perm, N_OUT, GS, 1.0)


def codes_off(got, want) -> int:
    """INT4 codes (both nibbles) and INT8 outliers that differ."""
    q, _, qo, _ = got
    wq, _, wqo, _ = want
    lo = ((q & 0xF) != (wq & 0xF)).sum() + ((q >> 4) != (wq >> 4)).sum()
    return int(lo + (qo != wqo).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="20,33,64,128")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--warps", default="2,4,8")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("explore_combine_quantize needs a CUDA GPU")
    cq = importlib.import_module("atom_ao.ops.combine_quantize")  # (atom_ao.ops.combine_quantize is the op)
    from atom_ao.ops import pdl as pdl_switch

    perm = torch.randperm(HEADS * D, generator=torch.Generator().manual_seed(1)).to(torch.int32).cuda()
    rows = []
    for splits in (int(s) for s in args.splits.split(",")):
        part, ml = partials(splits, seed=splits)
        for pdl_mode in (False, pdl_switch.AUTO):
            pdl_switch.enable(pdl_mode)
            pdl_on = pdl_switch.wanted(part, None, one_token=True)
            want = unfused(part, ml, perm, pdl_on)
            base = bench_us(lambda: [unfused(part, ml, perm, pdl_on) for _ in range(args.layers)]) / args.layers
            rows.append(dict(splits=splits, pdl=pdl_on, variant="reduce + quantize", us_per_layer=round(base, 2),
                             vs_unfused=1.0, codes_off=0))
            variants = [(False, 4, 32)] + [  # session 39's form, then the channels on the lanes
                (True, w, c) for w in (int(w) for w in args.warps.split(","))
                for c in sorted({32, 64, 128}) if c <= max(32, triton.next_power_of_2(splits))]
            for lanes, warps, chunk in variants:
                cq.CHANNELS_ON_LANES, cq.NUM_WARPS, cq.SPLIT_CHUNK = lanes, warps, chunk

                def fused():
                    return cq.combine_quantize_triton(part, ml, perm, N_OUT, GS, 1.0, torch.bfloat16)

                off = codes_off(fused(), want)
                us = bench_us(lambda: [fused() for _ in range(args.layers)]) / args.layers
                label = f"fused, channels on {'lanes' if lanes else 'splits'}, {warps} warps, chunk {chunk}"
                rows.append(dict(splits=splits, pdl=pdl_on, variant=label, us_per_layer=round(us, 2),
                                 vs_unfused=round(base / us, 3), codes_off=off))
                print(f"  S={splits:4d} pdl={pdl_on!s:5} {label:52s} {us:7.2f} us "
                      f"(unfused {base:6.2f}), codes off {off}", flush=True)
            cq.CHANNELS_ON_LANES, cq.NUM_WARPS, cq.SPLIT_CHUNK = True, 4, 32
    pdl_switch.enable(pdl_switch.AUTO)
    print(f"{gpu_name()}: {args.layers} launches a replay, us a launch")
    print(markdown_table(rows, COLUMNS))
    write_results("explore_combine_quantize", rows, COLUMNS, {"gpu": gpu_name(), "layers": args.layers})


if __name__ == "__main__":
    main()
