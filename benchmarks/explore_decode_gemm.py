"""The swap-AB W4A4 GEMM at decode sizes with the weights read from HBM, by config and split.

    python benchmarks/explore_decode_gemm.py [--ms 1,16] [--shapes "llama2-7b qkv,llama2-7b o"]

``explore_small_m`` times one weight, which the 50-60 MB L2 of an H100 / H200 keeps for the
next replay when it is under ~50 MB (Llama-2-7B qkv is 25 MB packed): its "% of copy" figures
at M = 1 are partly L2 reads. In a model every linear's weights are cold (the other 127 linears
of the step ran in between). Here one replay runs the GEMM over enough copies of the quantized
weight to exceed 2x L2, rotating, so each call streams its weight from HBM as it does in the
model; the time is per call. Each (weight rows a tile, warps, stages) config of the M regime is
timed with every split the shape allows, beside the default (the swap kernel's own rule).
``--gemv`` times the M = 1 dp4a kernel's tilings and splits beside the swap kernel instead.
``--scales-ab`` times each config and split with the group scales row-major, the token scales
group-major (the quantizers' layout) or both group-major. ``--out-share 0,2,3`` times the
autotuned kernel at each split with the outlier block in every split (0) or in the first split
only, its share that many groups shorter (``w4a4_gemm_swap.OUT_SHARE``).
The times include the kernel that sums split-K partials, as eager calls run it; compiled models
fuse that sum into the next kernel, which ``--no-split-sum`` mimics by leaving it out (the
splits then compete on the GEMM kernel alone).
Prints one table per shape and M; writes JSON + markdown (explore_decode_gemm_<gpu>).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_linear import SHAPES  # noqa: E402
from common import bench_us, markdown_table, measured_copy_bytes_per_s, write_results  # noqa: E402

from atom_ao.ops.gemm_tiles import splits_fit  # noqa: E402

L2_BYTES = 60e6
COLUMNS = ["shape", "M", "config", "split", "us", "weight_TB/s", "read_pct_of_copy"]


def main():
    import atom_ao
    from torchao.quantization import quantize_

    gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--shapes", default="llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down")
    ap.add_argument("--configs", default="128x3x4,128x5x4,64x3x4,64x5x4,128x4x8",
                    help="BLOCK_N x stages x warps of the swap kernel to time (16 tokens a tile up to M = 16, "
                         "else 32), or BLOCK_N x BLOCK_M x stages x warps [x maxnreg]")
    ap.add_argument("--splits", default="1,2,3,4,6,8")
    ap.add_argument("--gemv", action="store_true",
                    help="M = 1: the dp4a stream kernel (w4a4_gemv) by --gemv-configs and split, beside the swap default")
    ap.add_argument("--gemv-configs", default="32x4x4,16x4x4,16x4x2,8x2x1",
                    help="BLOCK_N x CHUNK x warps of the gemv kernel, a trailing s: its weight scales loaded once "
                         "per thread of their group row (GEMV_SCALE_COPIES), e.g. 32x4x4s")
    ap.add_argument("--no-split-sum", action="store_true",
                    help="time the GEMM kernel alone, without the kernel summing split-K partials (compiled models "
                         "leave that sum to Inductor, which fuses it into the next kernel)")
    ap.add_argument("--scales-ab", action="store_true",
                    help="each config and split with the scales row-major, the token scales group-major ((G, M) in "
                         "memory, the quantizers' layout) or both group-major (same bits, checked)")
    ap.add_argument("--masked-ab", action="store_true",
                    help="only the default, with the unmasked main loop (full tiles) and with every load masked")
    ap.add_argument("--out-share", default=None,
                    help="comma list of w4a4_gemm_swap.OUT_SHARE values: the default config at each split with each")
    args = ap.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    if any(not 3 <= len(c) <= 5 for c in configs):  # session 22-23's prefetch / token-layout fields are gone
        raise SystemExit(f"--configs: BLOCK_N x stages x warps or BLOCK_N x BLOCK_M x stages x warps [x maxnreg], "
                         f"got {args.configs!r}")
    copy_bps = measured_copy_bytes_per_s()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for label in args.shapes.split(","):
        k, n = SHAPES[label]
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        quantize_(lin, atom_ao.atom_config())
        w = lin.weight
        wbytes = w.qdata.numel() + w.outlier_qdata.numel() + 4 * (w.scale.numel() + w.outlier_scale.numel())
        copies = max(2, min(64, int(-(-2 * L2_BYTES // wbytes))))
        weights = [(w.qdata.clone(), w.scale.clone(), w.outlier_qdata.clone(), w.outlier_scale.clone())
                   for _ in range(copies)]
        for m in args.ms.split(","):
            m = int(m)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, :8] *= 60
            a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
            groups = a[1].shape[1]
            default = swap.swap_split_k(m, n, groups, sms)

            def per_call(path="swap", operands=None, **kw):
                a_c, weights_c = operands or (a, weights)

                def fn():
                    for wq in weights_c:
                        gemm.w4a4_gemm_triton(*a_c, *wq, None, w.group_size, x.dtype, path=path, **kw)
                with _split_sum_off(args.no_split_sum):
                    return bench_us(fn) / copies

            def add(config, split, us):
                tbs = wbytes / us / 1e6
                rows.append({"shape": label, "M": m, "config": config, "split": split, "us": round(us, 2),
                             "weight_TB/s": round(tbs, 2), "read_pct_of_copy": round(100 * tbs * 1e12 / copy_bps, 1)})

            if args.gemv and m == 1:
                _gemv_rows(args, gemm, gemv, a, weights[0], w, x.dtype, groups, sms, per_call, add, default)
                mine = [r for r in rows if r["shape"] == label and r["M"] == m]
                print(markdown_table(sorted(mine, key=lambda r: r["us"]), COLUMNS).split("\n", 2)[-1], flush=True)
                continue
            if args.masked_ab:
                fast = gemm.w4a4_gemm_triton(*a, *weights[0], None, w.group_size, x.dtype, path="swap")
                add("default, unmasked loop", default, per_call())
                gemm.SWAP_UNMASKED = False
                try:
                    masked = gemm.w4a4_gemm_triton(*a, *weights[0], None, w.group_size, x.dtype, path="swap")
                    assert torch.equal(fast, masked), "unmasked and masked loops differ"
                    add("default, masked loop", default, per_call())
                finally:
                    gemm.SWAP_UNMASKED = True
                mine = [r for r in rows if r["shape"] == label and r["M"] == m]
                print(markdown_table(mine, COLUMNS).split("\n", 2)[-1], flush=True)
                continue
            if args.out_share:
                _out_share_rows(args, swap, groups, per_call, add, default)
                mine = [r for r in rows if r["shape"] == label and r["M"] == m]
                print(markdown_table(sorted(mine, key=lambda r: (r["split"], r["us"])), COLUMNS).split("\n", 2)[-1],
                      flush=True)
                continue
            if args.scales_ab:
                _scales_rows(args, gemm, swap, a, weights, w, x.dtype, groups, configs, per_call, add, label, m)
                mine = [r for r in rows if r["shape"] == label and r["M"] == m]
                print(markdown_table(sorted(mine, key=lambda r: r["us"]), COLUMNS).split("\n", 2)[-1], flush=True)
                continue
            add("default (autotuned)", default, per_call())
            for cfg in configs:
                fixed, name = _fixed_config(cfg, m)
                _time_config(gemm, swap, fixed, name, f"{label} M={m}", args.splits, groups, per_call, add)
            mine = [r for r in rows if r["shape"] == label and r["M"] == m]
            print(markdown_table(sorted(mine, key=lambda r: r["us"]), COLUMNS).split("\n", 2)[-1], flush=True)
        weights = None
        torch.cuda.empty_cache()
    write_results("explore_decode_gemm", rows, COLUMNS, {"copy_bytes_per_s": copy_bps, "sms": sms})


def _group_major(t: torch.Tensor) -> torch.Tensor:
    """The same (rows, G) values stored group by group (unit row stride)."""
    return t.t().contiguous().t()


def _fitting_splits(splits: str, groups: int) -> list[int]:
    """The split counts of a --splits list that leave every share of ``groups`` some groups."""
    return [s for s in (int(v) for v in splits.split(",")) if splits_fit(groups, s)]


def _fixed_config(cfg: tuple, m: int) -> tuple[dict, str]:
    """A --configs entry -> the swap kernel's fixed meta-parameters and the row's name."""
    bn, bm, st, nw = cfg[:4] if len(cfg) >= 4 else (cfg[0], 16 if m <= 16 else 32, *cfg[1:])
    fixed = {"BLOCK_N": bn, "BLOCK_M": bm, "num_warps": nw, "num_stages": st}
    name = f"{bn}x{bm} st{st} w{nw}"
    if len(cfg) == 5:  # a register cap: more programs a SM (64x64 on 4 warps holds 167)
        fixed["maxnreg"] = cfg[4]
        name += f" maxnreg{cfg[4]}"
    return fixed, name


def _time_config(gemm, swap, fixed, name, where, splits, groups, per_call, add, operands=None, check=None):
    """The swap kernel at one fixed config, timed at every split of --splits the shape allows;
    ``check`` (run first, on the fixed config) may refuse it. A config that does not fit (or
    fails its check) is reported and skipped."""
    real = swap.swap_kernel_and_meta
    gemm.swap_kernel_and_meta = lambda _m: (swap._w4a4_gemm_swap_kernel_jit, fixed)
    try:
        if check is not None:
            check()
        for s in _fitting_splits(splits, groups):
            add(name, s, per_call(splits=s, operands=operands))
    except Exception as e:  # noqa: BLE001  (a config that does not fit: say so, go on)
        print(f"  {where} {name}: {type(e).__name__} {str(e)[:200]}")
    finally:
        gemm.swap_kernel_and_meta = real


def _scales_rows(args, gemm, swap, a, weights, w, dtype, groups, configs, per_call, add, label, m):
    """--scales-ab: every config x split x scale layout (the weights' scale copies made
    once, outside the timing; the token scales likewise), each layout's bits checked first."""
    row_a = (a[0], a[1].contiguous(), *a[2:])  # the quantizers write the token scales group-major
    tok_a = (a[0], _group_major(a[1]), *a[2:])
    layouts = {"row-major": (row_a, weights),
               "token-group-major": (tok_a, weights),  # the production layout since session 27
               "group-major": (tok_a, [(q, _group_major(s), o, os_) for q, s, o, os_ in weights])}
    want = gemm.w4a4_gemm_triton(*a, *weights[0], None, w.group_size, dtype, path="swap")
    for cfg in configs:
        fixed, name = _fixed_config(cfg, m)
        for layout, (a_l, weights_l) in layouts.items():
            def same_bits(a_l=a_l, weights_l=weights_l, who=f"{name} {layout}"):
                got = gemm.w4a4_gemm_triton(*a_l, *weights_l[0], None, w.group_size, dtype, path="swap")
                assert torch.equal(got, want), f"{who}: other bits"
            _time_config(gemm, swap, fixed, f"{name} {layout}", f"{label} M={m}", args.splits, groups, per_call,
                         add, operands=(a_l, weights_l), check=same_bits)


def _out_share_rows(args, swap, groups, per_call, add, default):
    """--out-share: the autotuned kernel at each split of --splits the shape allows (the rule's
    marked), once per OUT_SHARE value; the module's value restored after."""
    saved = swap.OUT_SHARE
    try:
        for share in (int(v) for v in args.out_share.split(",")):
            swap.OUT_SHARE = share
            for s in _fitting_splits(args.splits, groups):
                add(f"OUT_SHARE={share}{' (rule)' if s == default else ''}", s, per_call(splits=s))
    finally:
        swap.OUT_SHARE = saved


@contextlib.contextmanager
def _split_sum_off(off: bool):
    """With ``off``, the GEMM launchers leave split-K partials in their workspace, unsummed (timing
    only: compiled models fuse that sum into the next kernel)."""
    mod = importlib.import_module("atom_ao.ops.w4a4_gemm")
    real = mod._finish_splits
    if off:
        mod._finish_splits = lambda ws, out: out
    try:
        yield
    finally:
        mod._finish_splits = real


def _gemv_rows(args, gemm, gemv, a, wq, w, dtype, groups, sms, per_call, add, swap_split):
    """The gemv kernel at every config and split (same result as the swap kernel to float rounding
    of the sums, checked first), beside the swap kernel's default and the gemv default."""
    swap_out = gemm.w4a4_gemm_triton(*a, *wq, None, w.group_size, dtype, path="swap").float()
    add("swap default", swap_split, per_call("swap"))
    add("gemv default", gemv.gemv_split_k(wq[0].shape[0], groups, sms), per_call("gemv"))
    real, real_copies = gemv.GEMV_CONFIG, gemv.GEMV_SCALE_COPIES
    for cfg in args.gemv_configs.split(","):
        # a trailing "s": each weight scale loaded once per thread of its group row (GEMV_SCALE_COPIES)
        gemv.GEMV_SCALE_COPIES = cfg.endswith("s")
        gemv.GEMV_CONFIG = tuple(int(v) for v in cfg.rstrip("s").split("x"))
        try:
            got = gemm.w4a4_gemm_triton(*a, *wq, None, w.group_size, dtype, path="gemv").float()
            err = (got - swap_out).abs().max().item() / swap_out.abs().max().item()
            assert err < 1e-2, f"gemv {cfg} differs from swap: {err}"
            for s in _fitting_splits(args.splits, groups):
                add(f"gemv {cfg}", s, per_call("gemv", splits=s))
        except Exception as e:  # noqa: BLE001  (a config that does not compile: say so, go on)
            print(f"  gemv {cfg}: {type(e).__name__} {str(e)[:200]}")
        finally:
            gemv.GEMV_CONFIG, gemv.GEMV_SCALE_COPIES = real, real_copies


if __name__ == "__main__":
    main()
