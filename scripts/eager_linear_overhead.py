"""Where an eager (not compiled) Atom linear spends its CPU time at decode size.

Wall time per call of bf16 F.linear, the Atom linear, and its pieces called directly (the two
torch.ops, the two Triton launchers without the op dispatch), then a cProfile of the Atom linear.
    python scripts/eager_linear_overhead.py       (CUDA)
"""
import cProfile
import pstats
import time

import torch
import torch.nn as nn
from torchao.quantization import quantize_

import atom_ao.tensor as atom_tensor
from atom_ao import atom_config
from atom_ao.ops.quantize_activation import quantize_activation_triton
from atom_ao.ops.w4a4_gemm import w4a4_gemm_triton


def per_call_us(fn, n=200):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6 / n


def no_wrap(fn, *args, **kwargs):
    with atom_tensor._no_wrap_triton():  # as inside the op: launch, not the tracing HOP
        return fn(*args, **kwargs)


def op_path(mod, x):
    atom_tensor.EAGER_DIRECT_LAUNCH = False
    try:
        return mod(x)
    finally:
        atom_tensor.EAGER_DIRECT_LAUNCH = True


torch.manual_seed(0)
m, k, n = 16, 4096, 4096
lin = nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
ref = nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
quantize_(lin, atom_config(weight_clip_ratio=1.0))
w = lin.weight
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
a = torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
wargs = (w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None, w.group_size, x.dtype)
with torch.no_grad():
    rows = {
        "bf16 F.linear": lambda: ref(x),
        "atom linear (module, direct launches)": lambda: lin(x),
        "atom linear (module, through torch.ops)": lambda: op_path(lin, x),
        "torch.ops quantize_activation": lambda: torch.ops.atom_ao.quantize_activation(
            x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio),
        "quantize_activation_triton direct": lambda: no_wrap(quantize_activation_triton,
            x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio),
        "torch.ops w4a4_gemm": lambda: torch.ops.atom_ao.w4a4_gemm(*a, *wargs),
        "w4a4_gemm_triton direct": lambda: no_wrap(w4a4_gemm_triton, *a, *wargs),
        "w4a4_gemm_triton direct splits=1": lambda: no_wrap(w4a4_gemm_triton, *a, *wargs, splits=1),
        "torch.empty x4": lambda: [torch.empty((m, 16), device="cuda") for _ in range(4)],
    }
    for name, fn in rows.items():
        print(f"{name:45s} {per_call_us(fn):8.1f} us/call", flush=True)
    y_direct, y_ops = lin(x), op_path(lin, x)
    print("direct launches == torch.ops path:", torch.equal(y_direct, y_ops))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(200):
        lin(x)
    torch.cuda.synchronize()
    pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(30)
