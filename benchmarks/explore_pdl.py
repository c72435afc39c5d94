"""Programmatic dependent launch (PDL) on the batch-1 decode chain: activation quantize -> gemv.

At batch 1 the decode step is ~460 small kernels in a CUDA graph (session 31, Llama-2-7B shapes:
2200 us of kernels and ~270 us between them; the gemv 1301, the quantizer 274). Each kernel
starts only once the one before it has finished. With PDL (sm90+) a kernel may launch while
its predecessor runs: the gemv then loads its first weights (which no kernel writes) before it
waits (``griddepcontrol.wait``) for the quantizer that wrote the token, and the quantizer lets
the gemv launch as soon as it has started. This times what that buys, before any of it is wired
into compiled models (Inductor's launcher of user Triton kernels sets no launch attributes).

One timed replay (a CUDA graph) is LAYERS x the four linears of a Llama-2-7B layer (qkv, o,
gate/up, down), each its own copy of the weights (read from HBM, as in the model), each "quantize
the token, then the gemv on it". The chain is data-dependent as in the model: each linear's
input is the previous linear's output (its first K columns), so a missing wait would change the
result; every variant's final output is checked bit for bit against the one without PDL.

    python benchmarks/explore_pdl.py [--layers 32] [--splits 1]

Variants: "off" (plain launches), "gemv" (the gemvs launched with PDL: they start as the
quantizer's programs exit), "all" (both kernels with PDL, the quantizer letting the next launch
once it has waited), each with the gemv letting the next kernel launch at its wait ("early") or
after its K loop ("late", ``w4a4_gemv.GEMV_PDL_RELEASE``); "all" with the gemv also prefetching
the next ``--l2-ahead`` steps of its weights into L2 before its wait, and the gemvs alone on
pre-quantized tokens without / with PDL. Writes JSON + markdown (explore_pdl_<gpu>).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_us, markdown_table, write_results  # noqa: E402

# (K, N) of a Llama-2-7B layer's four linears (q/k/v fused, gate/up fused), in step order
LAYER = (("qkv", 4096, 12288), ("o", 4096, 4096), ("gate/up", 4096, 22016), ("down", 11008, 4096))
COLUMNS = ["variant", "us_per_step", "us_per_linear", "vs_off_us", "same_bits"]


def quantized_linears(copies: int, shapes=LAYER, device="cuda"):
    """The layer's Atom linears (torchao ``quantize_``), each cloned ``copies`` times: one list of
    operand tuples per layer. Weights ~ randn / sqrt(K), so activations keep their size down the
    chain."""
    import atom_ao
    from torchao.quantization import quantize_

    base = []
    for name, k, n in shapes:
        lin = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            lin.weight.normal_(0.0, k ** -0.5)
        quantize_(lin, atom_ao.atom_config())
        w = lin.weight
        base.append((name, k, w))
    layers = []
    for _ in range(copies):
        layers.append([(name, k, w, (w.qdata.clone(), w.scale.clone(), w.outlier_qdata.clone(),
                                     w.outlier_scale.clone())) for name, k, w in base])
    return layers


def run_chain(layers, x0, pdl_quantize: bool, pdl_gemv: bool, splits: int, tokens=None, record=None):
    """The chain once; ``tokens`` (one per linear, from ``quantize_all``) skips the quantizer,
    ``record`` (a list) collects each linear's quantized token."""
    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    from atom_ao.ops.producers import PLAIN

    x, i = x0, 0
    for layer in layers:
        for _, k, w, (wq, ws, wo, wos) in layer:
            if tokens is None:
                a = qa.launch_streaming(PLAIN, x[:, :k], None, None, None, w.perm, w.n_outliers, w.group_size,
                                        w.act_clip_ratio, False, x.dtype, pdl=pdl_quantize)
            else:
                a = tokens[i]
            if record is not None:
                record.append(a)
            out = torch.empty((1, wq.shape[0]), dtype=torch.bfloat16, device=x.device) if splits == 1 else \
                torch.empty((splits, 1, wq.shape[0]), dtype=torch.float32, device=x.device)
            gemv.launch_gemv(*a, wq, ws, wo, wos, None, out, w.group_size, splits, pdl=pdl_gemv)
            x = out if splits == 1 else out.sum(0).to(torch.bfloat16)
            i += 1
    return x


def quantize_all(layers, x0, splits: int):
    """Each linear's quantized token as the plain chain makes them (for the gemv-only variants)."""
    tokens = []
    run_chain(layers, x0, False, False, splits, record=tokens)
    return tokens


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--splits", type=int, default=1, help="split-K of every gemv (> 1: a torch sum after each)")
    ap.add_argument("--l2-ahead", default="2",
                    help="comma list: the 'all' variant again with each gemv prefetching that many steps of its "
                         "weights into L2 before its wait (w4a4_gemv.GEMV_L2_AHEAD)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        raise SystemExit("explore_pdl: needs an sm90+ GPU (programmatic dependent launch)")
    torch.manual_seed(0)
    layers = quantized_linears(args.layers)
    x0 = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    x0[:, :8] *= 60  # outlier channels, as real activations have
    tokens = quantize_all(layers, x0, args.splits)
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    chain = lambda q, g, t=None: lambda: run_chain(layers, x0, q, g, args.splits, t)  # noqa: E731
    # (name, gemv L2 steps ahead, when the gemv lets the next kernel launch, fn)
    variants = [("off", 0, "late", chain(False, False))]
    for release in ("early", "late"):
        variants += [(f"gemv, releases {release}", 0, release, chain(False, True)),
                     (f"all, gemv releases {release}", 0, release, chain(True, True))]
    variants += [(f"all, L2 ahead {n}", int(n), "late", chain(True, True))
                 for n in args.l2_ahead.split(",") if int(n) > 0]
    variants += [("gemv alone, off", 0, "late", chain(False, False, tokens))]
    variants += [(f"gemv alone, pdl, releases {r}", 0, r, chain(False, True, tokens)) for r in ("early", "late")]
    ref = {}
    rows = []
    n_linears = 4 * args.layers
    default_ahead, default_release = gemv.GEMV_L2_AHEAD, gemv.GEMV_PDL_RELEASE
    for name, ahead, release, fn in variants:
        gemv.GEMV_L2_AHEAD, gemv.GEMV_PDL_RELEASE = ahead, release
        got = fn()
        torch.cuda.synchronize()
        group = "alone" if "alone" in name else "chain"
        ref.setdefault(group, got)
        us = bench_us(fn)
        base = next((r["us_per_step"] for r in rows if r["variant"] == ("off" if group == "chain" else "gemv alone, off")),
                    us)
        rows.append({"variant": name, "us_per_step": round(us, 1), "us_per_linear": round(us / n_linears, 2),
                     "vs_off_us": round(us - base, 1), "same_bits": bool(torch.equal(got, ref[group]))})
        print(rows[-1], flush=True)
    gemv.GEMV_L2_AHEAD, gemv.GEMV_PDL_RELEASE = default_ahead, default_release
    print(markdown_table(rows, COLUMNS))
    stem = write_results("explore_pdl", rows, COLUMNS, {"layers": args.layers, "splits": args.splits,
                                                        "linears": [n for n, _, _ in LAYER]})
    print(f"wrote {stem}.json/.md")
    if not all(r["same_bits"] for r in rows):
        raise SystemExit("explore_pdl: a PDL variant's output differs from the plain chain's")


if __name__ == "__main__":
    main()
