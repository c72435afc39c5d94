"""Does Triton's automatic warp specialization speed up the decode-size (M = 16, 64) W4A4 GEMM?

The swap-AB kernel (``atom_ao/ops/w4a4_gemm_swap.py``) runs at M = 64 far below both its
weight-streaming and its INT8 tensor-core bounds (H200, Llama-2-7B qkv: 24 us, where 25 MB of
weights read at ~4 TB/s take ~6 us and its INT8 MMAs ~7 us): each warpgroup loads, unpacks, runs
the group's MMA, then converts and scales the group's INT32 sum, one after the other. Triton
(>= 3.5) can split such a loop into a producer warp that issues TMA loads and consumer
warpgroups that take half the tile each (``tl.range(..., warp_specialize=True)``), so one
consumer's MMAs can run while the other scales. On sm_90 it does so only for 4-warp kernels whose
loads go through on-device tensor descriptors (checked by compiling for sm_90 on a CPU machine
with Triton 3.9: 12 warps and ``setmaxnreg`` in the PTX; with 8 warps, or plain pointer loads,
the attribute is ignored).

This times, per Llama shape and M, the production op (``torch.ops.atom_ao.w4a4_gemm``, its own
regime and split) against one explore kernel in the swap-AB form with TMA loads, with and without
warp specialization, over two weight tiles. The explore kernel covers the INT4 groups only (no
INT8 outlier block, no bias: ~3% of the work) and reads activations unpacked to INT8 beforehand
(64 x 4096 bytes: untimed, negligible next to the weights), so it is a slight upper bound on what
the change would give the op; each row is checked against a float64 reference of the same sums.

The production form is the op's path "swap_ws" (``w4a4_gemm_swap``, opt-in): the swap kernel's own
loop (packed activations unpacked in registers) with TMA loads. A second `tl.dot` anywhere in the
kernel (its INT8 outlier block, after the loop or before it) makes the specializer fail on sm_90
(Triton 3.9, `NVGPUWarpSpecialization`), so that path adds the outlier block and the bias in the
kernel that sums the split partials; bench_linear times it as atom-gemm-ws.

    python benchmarks/explore_ws.py [--ms 16,64] [--shapes "llama2-7b qkv,llama2-7b o"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linear import SHAPES  # noqa: E402
from common import bench_us, gpu_name  # noqa: E402

from atom_ao.ops.gemm_tiles import group_sum_to_f32  # noqa: E402

GS = 128
HALF = GS // 2


@triton.jit
def _swap_tma_kernel(w_ptr, a_ptr, ws_ptr, as_ptr, part_ptr, M, N, G, SHARE,
                     HALF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, WS: tl.constexpr):
    """part[split] (M, N) = sum over the split's groups of (W_g A_g^T) x row scale x token scale.
    W: (N, G * HALF) packed nibbles as int8 (low: the group's first HALF codes, high: the rest);
    A: (M, G * 2 * HALF) INT8 codes; scales (N, G) and (M, G) float32."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    kb = G * HALF
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, kb], strides=[kb, 1], block_shape=[BLOCK_N, HALF])
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, 2 * kb], strides=[2 * kb, 1], block_shape=[BLOCK_M, HALF])
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    g0 = split * SHARE
    for g in tl.range(g0, tl.minimum(g0 + SHARE, G), warp_specialize=WS):
        wb = w_desc.load([pid_n * BLOCK_N, g * HALF])
        a_lo = a_desc.load([0, g * 2 * HALF])
        a_hi = a_desc.load([0, g * 2 * HALF + HALF])
        d = tl.dot((wb << 4) >> 4, a_lo.T, out_dtype=tl.int32)  # sign-extended low nibbles
        d = tl.dot(wb >> 4, a_hi.T, d, out_dtype=tl.int32)
        sw = tl.load(ws_ptr + offs_n * G + g)
        sa = tl.load(as_ptr + offs_m * G + g, mask=mask_m, other=0.0)
        acc += group_sum_to_f32(d) * sw[:, None] * sa[None, :]
    out = part_ptr + split * M * N + offs_m[None, :] * N + offs_n[:, None]
    tl.store(out, acc, mask=mask_m[None, :])


def explore_gemm(w_packed, a8, w_scale, a_scale, block_n: int, ws: bool, splits: int):
    m, n, g = a8.shape[0], w_packed.shape[0], w_scale.shape[1]
    part = torch.empty(splits, m, n, dtype=torch.float32, device=a8.device)
    grid = (n // block_n, splits)
    _swap_tma_kernel[grid](w_packed.view(torch.int8), a8, w_scale, a_scale, part, m, n, g, triton.cdiv(g, splits),
                           HALF=HALF, BLOCK_N=block_n, BLOCK_M=max(16, triton.next_power_of_2(m)), WS=ws,
                           num_warps=4, num_stages=3)
    return part.sum(0) if splits > 1 else part[0]


def pick_splits(n: int, groups: int, block_n: int, sms: int) -> int:
    """Double the split while the row tiles give less than one program a SM (>= 4 groups each;
    no split left empty)."""
    splits = 1
    while (n // block_n) * splits < sms and triton.cdiv(groups, 2 * splits) >= 4:
        splits *= 2
    while splits > 1 and (splits - 1) * triton.cdiv(groups, splits) >= groups:
        splits -= 1
    return splits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="16,64")
    ap.add_argument("--shapes", default="llama2-7b qkv,llama2-7b o,llama2-7b gate/up,llama2-7b down")
    args = ap.parse_args()
    import atom_ao  # noqa: F401  (registers the ops)
    from atom_ao.ops.w4a4_gemm_unpacked import unpack_int4_rows
    from torchao.quantization import quantize_

    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{gpu_name()}  us per call (median of CUDA-graph replays); explore = swap-AB + TMA, INT4 groups only")
    print(f"{'shape':22s} {'M':>3s} {'op':>7s}  " + "  ".join(f"{f'bn{bn} ws={int(ws)}':>14s}" for bn in (128, 256)
                                                        for ws in (False, True)))
    for label in args.shapes.split(","):
        k, n = SHAPES[label]
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        quantize_(lin, atom_ao.atom_config())
        w = lin.weight
        groups = w.scale.shape[1]
        w_scale = w.scale.float().contiguous()
        for m in (int(x) for x in args.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[:, :8] *= 60
            a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
            op_args = (*a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None, w.group_size, x.dtype)
            t_op = bench_us(lambda: torch.ops.atom_ao.w4a4_gemm(*op_args))
            # the op's packed activation codes, unpacked (reference order), and their group scales
            a8 = unpack_int4_rows(a[0], GS)
            a_scale = a[1].float().contiguous()
            w8 = unpack_int4_rows(w.qdata, GS)
            want = torch.einsum("mgk,ngk->mng", a8.view(m, groups, GS).double(), w8.view(n, groups, GS).double())
            want = (want * a_scale.double()[:, None, :] * w_scale.double()[None, :, :]).sum(-1)
            cells = []
            for bn in (128, 256):
                if n % bn:
                    cells += ["-", "-"]
                    continue
                splits = pick_splits(n, groups, bn, sms)
                for ws in (False, True):
                    try:
                        got = explore_gemm(w.qdata, a8, w_scale, a_scale, bn, ws, splits)
                        err = ((got.double() - want).norm() / want.norm()).item()
                        t = bench_us(lambda: explore_gemm(w.qdata, a8, w_scale, a_scale, bn, ws, splits))
                        cells.append(f"{t:7.1f} s{splits}{'' if err < 1e-5 else ' BAD'}")
                    except Exception as e:
                        cells.append(f"fail({type(e).__name__})")
            print(f"{label:22s} {m:3d} {t_op:7.1f}  " + "  ".join(f"{c:>14s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
