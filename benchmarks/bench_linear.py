"""W4A4 linear vs cuBLAS bf16 and torchao's Float8 / Int8 dynamic paths, side by side on one GPU.

    python benchmarks/bench_linear.py                 # all shapes x M in {1, ..., 8192}
    python benchmarks/bench_linear.py --quick         # two shapes, four M

Rows: median time (CUDA-graph replays), effective TOPS (2*M*N*K / time), speed-up over bf16,
and roofline % = the larger of the byte floor (bytes / copy bandwidth) and the op floor
(ops / the tensor-core rate of that format), over the time. Paths: bf16 (``F.linear``), fp8 / int8
(torchao, compiled), atom (the whole quantized linear: activation quantize + GEMM), atom-gemm (the
GEMM alone), for M <= 64 atom-gemm-nosplit (the same GEMM with split-K off) and, from M = 2,
atom-gemm-tiles (the tile kernel that the swap-AB kernel replaces up to SWAP_MAX_M), and from M = 256 on
atom-gemm-packed / atom-gemm-unpacked (the GEMM of the other M regime: packed nibbles unpacked in the
main loop, or INT8 copies first; see ``UNPACKED_MIN_M``).

    python benchmarks/bench_linear.py --shapes "llama2-7b o,llama2-70b down" --ms 1,16 --tag _small
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import COPY_BYTES_PER_S, PEAK_OPS, bench_us, gpu_name, markdown_table, write_results  # noqa: E402

SHAPES = {  # (K, N) of real linears
    "llama2-7b qkv": (4096, 12288),
    "llama2-7b o": (4096, 4096),
    "llama2-7b gate/up": (4096, 22016),
    "llama2-7b down": (11008, 4096),
    "llama2-7b gate": (4096, 11008),  # gate or up alone: transformers' Llama and gpt.py run them unfused
    "llama3-8b qkv": (4096, 6144),
    "llama3-8b gate/up": (4096, 28672),
    "llama3-8b down": (14336, 4096),
    "llama2-70b o": (8192, 8192),
    "llama2-70b down": (28672, 8192),
}
MS = [1, 16, 64, 256, 1024, 4096, 8192]


def _bytes(kind: str, m: int, n: int, k: int) -> float:
    """Fewest bytes each path must move: activations in, weights, scales, output."""
    x, y = 2 * m * k, 2 * m * n
    if kind == "bf16":
        return x + 2 * n * k + y
    if kind in ("fp8", "int8"):
        return x + n * k + 4 * n + y
    # atom: packed INT4 + INT8 outliers + float32 group scales (weights), quantized acts for GEMM
    w = n * (k - 128) / 2 + n * 128 + 4 * n * (k // 128)
    if kind.startswith("atom-gemm"):
        return m * (k - 128) / 2 + m * 128 + 4 * m * (k // 128) + w + y
    return x + w + y


def _gemm_imports():
    import importlib

    mod = importlib.import_module("atom_ao.ops.w4a4_gemm")  # atom_ao.ops re-exports the op under that name
    return mod.SPLIT_MAX_M, mod.SWAP_MAX_M, mod.UNPACKED_MIN_M, mod.w4a4_gemm_triton


SPLIT_MAX_M, SWAP_MAX_M, UNPACKED_MIN_M, w4a4_gemm_triton = _gemm_imports()


def make_linears(k: int, n: int, contenders: list[str], compile_torchao: bool):
    from torchao.quantization import quantize_

    import atom_ao

    # a fresh Dynamo cache per shape: the compiled torchao linears of earlier shapes would
    # otherwise use up the recompile limit and fall back to eager
    torch._dynamo.reset()
    base = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    out = {"bf16": base}
    if "atom" in contenders:
        lin = copy.deepcopy(base)
        quantize_(lin, atom_ao.atom_config())
        out["atom"] = lin
    for name in ("fp8", "int8"):
        if name not in contenders:
            continue
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            PerRow,
        )

        cfg = (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) if name == "fp8"
               else Int8DynamicActivationInt8WeightConfig())
        lin = copy.deepcopy(base)
        quantize_(lin, cfg)
        # torchao's dynamic paths rely on Inductor to fuse the activation quantization
        out[name] = torch.compile(lin, dynamic=True) if compile_torchao else lin
    return out


def run(shapes: dict, ms: list[int], contenders: list[str], compile_torchao: bool) -> list[dict]:
    rows = []
    for label, (k, n) in shapes.items():
        lins = make_linears(k, n, contenders, compile_torchao)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, :8] *= 60  # a few loud channels, as real activations have
            times = {}
            with torch.no_grad():
                for name, lin in lins.items():
                    try:
                        times[name] = bench_us(lambda: lin(x))
                    except Exception as e:
                        print(f"{label} M={m} {name}: failed ({type(e).__name__}: {str(e)[:120]})")
                if "atom" in lins:
                    w = lins["atom"].weight
                    a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
                    gemm_args = (*a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None, w.group_size, x.dtype)
                    times["atom-gemm"] = bench_us(lambda: torch.ops.atom_ao.w4a4_gemm(*gemm_args))
                    if m <= SPLIT_MAX_M:  # the same GEMM without split-K, to show what it buys
                        times["atom-gemm-nosplit"] = bench_us(lambda: w4a4_gemm_triton(*gemm_args, splits=1))
                    if 2 <= m <= SWAP_MAX_M:  # the tile kernel the swap-AB kernel replaced there
                        times["atom-gemm-tiles"] = bench_us(lambda: w4a4_gemm_triton(*gemm_args, path="packed"))
                    if m >= 256:  # the other large-M kernel, to show where they cross
                        other = "packed" if m >= UNPACKED_MIN_M else "unpacked"
                        times[f"atom-gemm-{other}"] = bench_us(
                            lambda: w4a4_gemm_triton(*gemm_args, splits=1, path=other))
            flops = 2.0 * m * n * k
            for name, us in times.items():
                peak = PEAK_OPS["bf16" if name == "bf16" else "fp8" if name == "fp8" else "int8"]
                floor_s = max(_bytes(name, m, n, k) / COPY_BYTES_PER_S, flops / peak)
                rows.append({
                    "shape": label, "K": k, "N": n, "M": m, "path": name, "us": round(us, 2),
                    "TOPS": round(flops / us / 1e6, 1),
                    "speedup_vs_bf16": round(times["bf16"] / us, 2) if "bf16" in times else None,
                    "roofline_pct": round(100 * floor_s * 1e6 / us, 1),
                })
            print(markdown_table([r for r in rows if r["shape"] == label and r["M"] == m],
                                 ["shape", "M", "path", "us", "TOPS", "speedup_vs_bf16", "roofline_pct"]).split("\n", 2)[-1],
                  flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for path_name in ("fp8", "int8", "atom", "atom-gemm"):
            pts = [(r["M"], r["speedup_vs_bf16"]) for r in rows if r["shape"] == shape and r["path"] == path_name]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=path_name)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("M (tokens)")
    axes[0][0].set_ylabel("speed-up over bf16 cuBLAS")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Linear layers on {gpu_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two shapes, four M")
    ap.add_argument("--no-torchao", action="store_true", help="skip torchao's Float8 / Int8 rows")
    ap.add_argument("--eager-torchao", action="store_true", help="do not torch.compile torchao's paths")
    ap.add_argument("--shapes", default=None, help=f"comma list of shape names, of: {', '.join(SHAPES)}")
    ap.add_argument("--ms", default=None, help="comma list of M (default: all of %s)" % MS)
    ap.add_argument("--tag", default="", help="suffix of the result files (a partial run)")
    args = ap.parse_args()
    shapes, ms = SHAPES, MS
    if args.quick:
        shapes = {k: SHAPES[k] for k in ("llama2-7b qkv", "llama2-7b down")}
        ms = [1, 16, 256, 4096]
    if args.shapes:
        unknown = [k for k in args.shapes.split(",") if k not in SHAPES]
        if unknown:
            ap.error(f"unknown shapes {unknown}; known: {list(SHAPES)}")
        shapes = {k: SHAPES[k] for k in args.shapes.split(",")}
    if args.ms:
        ms = [int(m) for m in args.ms.split(",")]
    contenders = ["atom"] + ([] if args.no_torchao else ["fp8", "int8"])
    rows = run(shapes, ms, contenders, compile_torchao=not args.eager_torchao)
    stem = write_results("bench_linear" + args.tag, rows,
                         ["shape", "K", "N", "M", "path", "us", "TOPS", "speedup_vs_bf16", "roofline_pct"],
                         {"command": " ".join(sys.argv), "torchao_compiled": not args.eager_torchao})
    plot(rows, stem.with_name(stem.name + ".png"))
    print(f"\nwrote {stem}.json/.md/.png")


if __name__ == "__main__":
    main()
