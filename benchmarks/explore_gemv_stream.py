"""How fast can a batch-1 gemv's weights stream at all? Load-only kernels at the gemv's sizes.

    python benchmarks/explore_gemv_stream.py [--shapes "llama2-7b gate/up,llama2-7b o"]

The W4A4 gemv (``atom_ao.ops.w4a4_gemv``) reads Llama linears at ~3.0 TB/s with cold weights,
against ~4.4 for a read-only pass over 1 GiB. This separates the access pattern from the math:
each kernel here only loads the packed weight words and xors them together (one instruction a
word), keeping the gemv's register double-buffering (the next step's loads issued before this
step's use):

* ``rows``: the gemv's pattern: a program owns BLOCK_N weight rows and walks K, each step
  BLOCK_N rows x STEP words (256 bytes a row at the default 4 groups of 16 words);
* ``tiles``: the same bytes laid out so each program's step is one contiguous BLOCK_N x STEP
  block (a weight layout the gemv could be given at quantize time);
* ``tma``: the rows pattern through TMA, several boxes in flight in shared memory (no registers
  hold the next step);
* split-K as the gemv does it (``--splits``), programs sharing a row block's K.

Beside them, the real gemv at its default config and split, and ``torch.sum`` over 1 GiB of
bf16. Each time is per call over enough copies of the weight to exceed 2x L2 (cold, as in a
model); TB/s of the packed group words. Writes explore_gemv_stream_<gpu>.json/.md.

H200, session 37 (results/h200/session37_explore_gemv_stream_s37.log). A split count or step
that does not divide a row's words reads only the whole steps (the TB/s column counts the bytes
read; the us are then not comparable). The gemv's tile (32 rows x 64 words, 4 warps), TB/s:

| Llama-2-7B | rows, 1 / 4 splits | tiles, 1 / 4 | TMA 3 / 6 boxes, 1 split | the gemv kernel alone |
|---|---|---|---|---|
| gate/up (44 MB) | 3.45 / 2.90 | 3.55 / 3.05 | 3.01 / 2.88 | 14.7 us (1 split): 2.98 |
| down (22 MB) | 1.94 / 2.99 | 2.19 / 3.00 | 1.82 / 2.44 | 8.93 us (4 splits): 2.44 |
| o (8 MB) | 1.44 / 1.35 | 1.50 / 1.39 | 1.21 / 1.37 | 4.62 us (4 splits): 1.74 |

(the gemv alone: ``explore_decode_gemm.py --gemv --no-split-sum``, same machine,
results/h200/session37_explore_gemv_chunk8_s37.log; here its eager call adds the split sum.)
The contiguous layout gains 1-6%, TMA loses, 128-word steps gain nothing per byte (gate/up 3.33
at 1 split), and a load-only kernel reads the 8 MB o weight at 1.5 TB/s: the small linears pay
the stream's ramp, not the math. On gate/up the math costs ~3.3 us of the gemv's 14.7 (11.4
load-only with its tile); on o the gemv is as fast as the stream alone. torch.sum over 1 GiB of
int32 read 0.77 TB/s (an int64 sum, not a ceiling; the script now sums bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_linear import SHAPES  # noqa: E402
from common import bench_us, markdown_table, write_results  # noqa: E402

L2_BYTES = 60e6
COLUMNS = ["shape", "kernel", "block_n", "step_words", "warps", "splits", "us", "TB/s"]


@triton.jit
def _stream_rows_kernel(w_ptr, out_ptr, share_words, stride_n,
                        BLOCK_N: tl.constexpr, STEP: tl.constexpr):
    """Program (row block, split): rows BLOCK_N, K words [split * share, + share), STEP a step."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ptrs = w_ptr + rows[:, None] * stride_n + split * share_words + tl.arange(0, STEP)[None, :]
    acc = tl.zeros((BLOCK_N, STEP), tl.int32)
    cur = tl.load(ptrs)
    for k in range(STEP, share_words, STEP):
        nxt = tl.load(ptrs + k)
        acc = acc ^ cur
        cur = nxt
    acc = acc ^ cur
    tl.store(out_ptr + (split * tl.num_programs(0) + pid_n) * BLOCK_N + tl.arange(0, BLOCK_N),
             tl.xor_sum(acc, axis=1))


@triton.jit
def _stream_tiles_kernel(w_ptr, out_ptr, share_words,
                         BLOCK_N: tl.constexpr, STEP: tl.constexpr):
    """The same bytes, each (row block, split)'s share one contiguous run of BLOCK_N x STEP blocks."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    base = w_ptr + (pid_n * tl.num_programs(1) + split).to(tl.int64) * share_words * BLOCK_N
    offs = tl.arange(0, BLOCK_N * STEP)
    acc = tl.zeros((BLOCK_N * STEP,), tl.int32)
    cur = tl.load(base + offs)
    for k in range(BLOCK_N * STEP, share_words * BLOCK_N, BLOCK_N * STEP):
        nxt = tl.load(base + k + offs)
        acc = acc ^ cur
        cur = nxt
    acc = acc ^ cur
    acc2 = tl.reshape(acc, (BLOCK_N, STEP))
    tl.store(out_ptr + (split * tl.num_programs(0) + pid_n) * BLOCK_N + tl.arange(0, BLOCK_N),
             tl.xor_sum(acc2, axis=1))


@triton.jit
def _stream_tma_kernel(w_ptr, out_ptr, N, KW, stride_n, share_words,
                       BLOCK_N: tl.constexpr, STEP: tl.constexpr, STAGES: tl.constexpr):
    """The rows pattern through TMA: a (BLOCK_N, STEP) box a step, STAGES boxes in flight in shared
    memory (Triton's pipeliner on a tensor descriptor), no registers holding the next step."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    desc = tl.make_tensor_descriptor(w_ptr, shape=[N, KW], strides=[stride_n, 1], block_shape=[BLOCK_N, STEP])
    acc = tl.zeros((BLOCK_N, STEP), tl.int32)
    for k in tl.range(0, share_words, STEP, num_stages=STAGES):
        acc = acc ^ desc.load([pid_n * BLOCK_N, split * share_words + k])
    tl.store(out_ptr + (split * tl.num_programs(0) + pid_n) * BLOCK_N + tl.arange(0, BLOCK_N),
             tl.xor_sum(acc, axis=1))


def stream_tma(words: torch.Tensor, block_n: int, step: int, warps: int, splits: int = 1,
               stages: int = 4) -> torch.Tensor:
    """As ``stream_rows``, the loads by TMA with ``stages`` boxes in flight (sm90+; the interpreter)."""
    share = check_stream_args(words, block_n, step, splits)
    n, kw = words.shape
    out = torch.empty(splits, n, dtype=torch.int32, device=words.device)
    _stream_tma_kernel[(n // block_n, splits)](words, out, n, kw, words.stride(0), share, BLOCK_N=block_n, STEP=step,
                                               STAGES=stages, num_warps=warps)
    return out


def _set_tma_allocator():
    """Device-side tensor descriptors take their workspace from Triton's allocator."""
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def check_stream_args(words: torch.Tensor, block_n: int, step: int, splits: int) -> int:
    """K words a share; raises on a shape the unmasked kernels cannot take."""
    if words.dtype != torch.int32 or words.dim() != 2 or words.stride(1) != 1:
        raise ValueError(f"weight words must be a 2-D int32 tensor with unit column stride, got {words.dtype} "
                         f"{tuple(words.shape)} strides {words.stride()}")
    n, kw = words.shape
    if n % block_n or kw % (splits * step):
        raise ValueError(f"({n}, {kw}) words: rows must divide by {block_n} and K words by splits x step "
                         f"= {splits * step}")
    return kw // splits


def stream_rows(words: torch.Tensor, block_n: int, step: int, warps: int, splits: int = 1) -> torch.Tensor:
    """(splits, N) int32: the xor of each row's words over each split's share, read the gemv's way."""
    share = check_stream_args(words, block_n, step, splits)
    out = torch.empty(splits, words.shape[0], dtype=torch.int32, device=words.device)
    _stream_rows_kernel[(words.shape[0] // block_n, splits)](words, out, share, words.stride(0),
                                                             BLOCK_N=block_n, STEP=step, num_warps=warps, num_stages=1)
    return out


def to_tiles(words: torch.Tensor, block_n: int, step: int, splits: int = 1) -> torch.Tensor:
    """The tiles layout of ``words``: (row block, split, step, BLOCK_N, STEP) contiguous."""
    share = check_stream_args(words, block_n, step, splits)
    n, _ = words.shape
    t = words.contiguous().view(n // block_n, block_n, splits, share // step, step)
    return t.permute(0, 2, 3, 1, 4).contiguous()


def stream_tiles(tiles: torch.Tensor, n: int, block_n: int, step: int, warps: int, splits: int = 1) -> torch.Tensor:
    share = tiles.shape[2] * step
    out = torch.empty(splits, n, dtype=torch.int32, device=tiles.device)
    _stream_tiles_kernel[(n // block_n, splits)](tiles, out, share, BLOCK_N=block_n, STEP=step,
                                                 num_warps=warps, num_stages=1)
    return out


def reference_xor(words: torch.Tensor, splits: int) -> torch.Tensor:
    """(splits, N): each row's words xor-ed over each split's share (the kernels' oracle)."""
    n, kw = words.shape
    parts = words.view(n, splits, kw // splits)
    acc = torch.zeros(n, splits, dtype=torch.int32, device=words.device)
    for j in range(parts.shape[2]):
        acc ^= parts[:, :, j]
    return acc.T.contiguous()


def main():
    import importlib

    import atom_ao
    from torchao.quantization import quantize_

    gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")  # (atom_ao.ops re-exports the op under this name)
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama2-7b o,llama2-7b qkv,llama2-7b gate/up,llama2-7b down")
    ap.add_argument("--configs", default="32x64x4,32x128x4,64x64x8",
                    help="BLOCK_N x STEP words x warps of the load-only kernels (the gemv: 32 x 64 x 4)")
    ap.add_argument("--splits", default="1,4")
    ap.add_argument("--tma-stages", default="3,6", help="TMA boxes in flight a program (the tma rows)")
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    _set_tma_allocator()
    rows = []

    # bf16: torch's int32 sum (an int64 accumulation) read 1 GiB at 0.77 TB/s on the H200 (session 37)
    big = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")
    us = bench_us(lambda: big.sum())
    rows.append({"shape": "1 GiB", "kernel": "torch.sum (bf16)", "us": round(us, 1), "TB/s": round(big.numel() * 2 / us / 1e6, 2)})
    del big

    for label in args.shapes.split(","):
        k, n = SHAPES[label]
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        quantize_(lin, atom_ao.atom_config())
        w = lin.weight
        words = w.qdata.view(torch.int32)  # (N, K_groups / 2 bytes / 4): the gemv's int32 view
        wbytes = words.numel() * 4
        copies = max(2, min(64, int(-(-2 * L2_BYTES // wbytes))))

        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
        wq = [(w.qdata.clone(), w.scale.clone(), w.outlier_qdata.clone(), w.outlier_scale.clone()) for _ in range(copies)]
        groups = a[1].shape[1]
        split = gemv.gemv_split_k(n, groups, sms)

        def gemv_all():
            for q in wq:
                gemm.w4a4_gemm_triton(*a, *q, None, w.group_size, x.dtype, path="gemv")
        with_split_sum = bench_us(gemv_all) / copies
        gemv_add = lambda **r: rows.append({"shape": label, **r, "TB/s": round(wbytes / r["us"] / 1e6, 2)})  # noqa: E731
        gemv_add(kernel="w4a4_gemv (+ split sum)", block_n=gemv.GEMV_CONFIG[0], step_words=gemv.GEMV_CONFIG[1] * w.group_size // 8,
            warps=gemv.GEMV_CONFIG[2], splits=split, us=round(with_split_sum, 2))
        wq = None

        copies_w = [words.clone() for _ in range(copies)]
        for cfg in args.configs.split(","):
            block_n, step, warps = (int(v) for v in cfg.split("x"))
            for s in (int(v) for v in args.splits.split(",")):
                used = words.shape[1] - words.shape[1] % (s * step)  # whole steps only (Llama-2 down: 1376 words)
                if n % block_n or used == 0:
                    continue
                part = lambda t: t[:, :used]  # noqa: E731
                add = lambda **r: rows.append({"shape": label, **r, "TB/s": round(4 * n * used / r["us"] / 1e6, 2)})  # noqa: E731
                ref = reference_xor(part(words).contiguous(), s)
                assert torch.equal(stream_rows(part(words), block_n, step, warps, s), ref), f"rows {cfg} split {s}"
                us = bench_us(lambda: [stream_rows(part(c), block_n, step, warps, s) for c in copies_w]) / copies
                add(kernel="rows (load + xor)", block_n=block_n, step_words=step, warps=warps, splits=s, us=round(us, 2))
                tiles = [to_tiles(part(c), block_n, step, s) for c in copies_w]
                assert torch.equal(stream_tiles(tiles[0], n, block_n, step, warps, s), ref), f"tiles {cfg} split {s}"
                us = bench_us(lambda: [stream_tiles(t, n, block_n, step, warps, s) for t in tiles]) / copies
                add(kernel="tiles (load + xor)", block_n=block_n, step_words=step, warps=warps, splits=s, us=round(us, 2))
                tiles = None
                for st in (int(v) for v in args.tma_stages.split(",")):
                    try:
                        assert torch.equal(stream_tma(part(words), block_n, step, warps, s, st), ref), f"tma {cfg}"
                        us = bench_us(lambda: [stream_tma(part(c), block_n, step, warps, s, st) for c in copies_w]) / copies
                        add(kernel=f"tma {st} stages (load + xor)", block_n=block_n, step_words=step, warps=warps,
                            splits=s, us=round(us, 2))
                    except Exception as e:  # noqa: BLE001  (say why, go on)
                        print(f"  tma {cfg} split {s} stages {st}: {type(e).__name__} {str(e)[:300]}")
        copies_w = None
        torch.cuda.empty_cache()
        mine = [r for r in rows if r["shape"] == label]
        print(markdown_table(sorted(mine, key=lambda r: r["us"]), COLUMNS), flush=True)
    print(markdown_table(rows[:1], COLUMNS))
    write_results("explore_gemv_stream", rows, COLUMNS, {"command": " ".join(sys.argv), "sms": sms})


if __name__ == "__main__":
    main()
