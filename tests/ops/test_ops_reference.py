"""The torch.library ops: opcheck, and the reference GEMM against a per-element integer oracle."""

import pytest
import torch
from torch.library import opcheck

import atom_ao.ops  # noqa: F401
from atom_ao.format import quantize_activation_ref, unpack_int4
from atom_ao.weight import quantize_weight
from conftest import outlier_activations

ops = torch.ops.atom_ao


def _inputs(m=5, k=200, n=48, n_out=32, gs=64, dtype=torch.bfloat16, seed=0):
    x, _ = outlier_activations(m, k, dtype=dtype, seed=seed)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).to(torch.int32)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + 1)) * 0.05
    wq = quantize_weight(w, perm, n_out, gs, clip_ratio=None)
    return x, perm, wq


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_opcheck_quantize_activation(dtype):
    x, perm, _ = _inputs(dtype=dtype)
    opcheck(ops.quantize_activation.default, (x, perm, 32, 64, 0.9))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_w4a4_gemm(bias):
    x, perm, wq = _inputs()
    a = ops.quantize_activation(x, perm, 32, 64, 0.9)
    b = torch.randn(48, dtype=torch.bfloat16) if bias else None
    opcheck(ops.w4a4_gemm.default,
            (*a, wq["qdata"], wq["scale"], wq["outlier_qdata"], wq["outlier_scale"], b, 64, torch.bfloat16))


def test_gemm_reference_equals_integer_oracle():
    """Per-group INT32 (here int64) dots, then the scales, one output element at a time."""
    m, n, gs = 3, 4, 64
    x, perm, wq = _inputs(m=m, n=n, gs=gs, dtype=torch.float32)
    a_packed, a_scale, a_out, a_out_scale = quantize_activation_ref(x, perm, 32, gs, 0.9)
    y = ops.w4a4_gemm(a_packed, a_scale, a_out, a_out_scale, wq["qdata"], wq["scale"],
                      wq["outlier_qdata"], wq["outlier_scale"], None, gs, torch.float32)
    a = unpack_int4(a_packed, gs).long()
    w = unpack_int4(wq["qdata"], gs).long()
    for i in range(m):
        for j in range(n):
            acc = 0.0
            for g in range(a_scale.shape[1]):
                dot = int((a[i, g * gs:(g + 1) * gs] * w[j, g * gs:(g + 1) * gs]).sum())
                acc += dot * float(a_scale[i, g]) * float(wq["scale"][j, g])
            dot_o = int((a_out[i].long() * wq["outlier_qdata"][j].long()).sum())
            acc += dot_o * float(a_out_scale[i]) * float(wq["outlier_scale"][j])
            assert abs(float(y[i, j]) - acc) <= 1e-5 * max(1.0, abs(acc)), (i, j)


def test_quantize_activation_non_contiguous_input():
    x, perm, _ = _inputs(dtype=torch.float16)
    xt = x.t().contiguous().t()  # same values, column-major
    assert not xt.is_contiguous()
    for got, want in zip(ops.quantize_activation(xt, perm, 32, 64, 0.9), ops.quantize_activation(x, perm, 32, 64, 0.9)):
        assert torch.equal(got, want)
