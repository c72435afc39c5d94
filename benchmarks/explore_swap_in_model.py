"""The swap GEMM's settings inside the compiled model: bench_generate with the swap kernel's
split-K outlier share (``w4a4_gemm_swap.OUT_SHARE``) and, optionally, one fixed config for every
token regime (no autotuning), so an A/B of the kernel timed alone (explore_decode_gemm) can be
checked where it counts: the decode step's profile.

    python benchmarks/explore_swap_in_model.py --out-share 3 --swap-config 64x64x3x4 -- \\
        --batches 64 --paths atom-kv4 --gen 32 --steps 16 --profile

Everything after ``--`` goes to bench_generate.py. One form a process, Inductor's caches off
(``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` unless set), so each compiles and autotunes afresh.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pin_swap_config(spec: str) -> str:
    """Every token regime of the swap kernel on the one config BLOCK_N x BLOCK_M x stages x warps."""
    import triton

    from atom_ao.ops import w4a4_gemm_swap as swap

    try:
        bn, bm, st, nw = (int(v) for v in spec.split("x"))
    except ValueError:
        raise SystemExit(f"--swap-config: BLOCK_N x BLOCK_M x stages x warps, e.g. 64x64x3x4; got {spec!r}")
    if bm > swap.SWAP_MAX_M or min(bn, bm, st, nw) < 1:
        raise SystemExit(f"--swap-config: BLOCK_M <= {swap.SWAP_MAX_M} and every field >= 1; got {spec!r}")
    config = triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=nw, num_stages=st)
    for regime in swap.SWAP_KERNELS:
        swap.SWAP_KERNELS[regime] = swap.swap_autotuner([config])
    return f"{bn}x{bm} st{st} w{nw}"


def main():
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-share", type=int, default=None, help="w4a4_gemm_swap.OUT_SHARE (default: the module's)")
    ap.add_argument("--swap-config", default=None, help="BLOCK_N x BLOCK_M x stages x warps for every regime")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    # an autotuning pick or graph cached by an earlier form (another OUT_SHARE, another config) must
    # not serve this one: set before torch is imported, and on Inductor's config after
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    import torch._inductor.config as inductor_config

    inductor_config.force_disable_caches = os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] == "1"
    from atom_ao.ops import w4a4_gemm_swap as swap

    if args.out_share is not None:
        if args.out_share < 0:
            raise SystemExit(f"--out-share must be >= 0, got {args.out_share}")
        swap.OUT_SHARE = args.out_share
    pinned = pin_swap_config(args.swap_config) if args.swap_config else "autotuned"
    print(f"swap GEMM in the model: OUT_SHARE={swap.OUT_SHARE}, config {pinned}", flush=True)
    sys.argv = [str(Path(__file__).with_name("bench_generate.py")), *rest]
    runpy.run_path(sys.argv[0], run_name="__main__")
    for regime, kernel in swap.SWAP_KERNELS.items():  # Triton's own autotuner (Inductor may tune instead)
        for key, config in getattr(kernel, "cache", {}).items():
            print(f"autotuner regime {regime} key {key}: {config}")


if __name__ == "__main__":
    main()
