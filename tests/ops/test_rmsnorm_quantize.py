"""``atom_ao::rmsnorm_quantize``: the fused RMSNorm + permute + quantize kernel against
``quantize_activation_ref(rms_norm(x) * weight)``, under Triton's interpreter on CPU (on the GPU
with one). Integer codes match exactly except rare rounding-boundary flips (fused_compare)."""

import os

import pytest
import torch
from torch.library import opcheck

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.format import quantize_activation_ref  # noqa: E402
from atom_ao.ops.rmsnorm_quantize import rms_norm_ref, rmsnorm_quantize_ref, rmsnorm_quantize_triton  # noqa: E402
from conftest import outlier_activations  # noqa: E402
from fused_compare import assert_quantized_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(m, k, dtype, seed=0, w_dtype=None):
    x, _ = outlier_activations(m, k, dtype=dtype, seed=seed)  # 4 channels 50-100x louder
    g = torch.Generator().manual_seed(seed + 1)
    w = (torch.rand(k, generator=g) + 0.5).to(w_dtype or dtype)
    perm = torch.randperm(k, generator=g).to(torch.int32)
    return x, w, perm


@pytest.mark.parametrize("m, k, n_out, gs", [(1, 200, 32, 64), (5, 320, 16, 96), (9, 576, 128, 128), (3, 256, 0, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cast_before_weight", [False, True])
def test_triton_matches_reference(m, k, n_out, gs, dtype, cast_before_weight):
    x, w, perm = _inputs(m, k, dtype, seed=m + k)
    want = rmsnorm_quantize_ref(x, w, 1e-6, perm, n_out, gs, 0.9, cast_before_weight)
    got = rmsnorm_quantize_triton(x.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), n_out, gs, 0.9, cast_before_weight)
    assert_quantized_close(got, want, gs)


@pytest.mark.parametrize("m, k, n_out, gs", [(5, 320, 16, 96), (9, 1100, 128, 128)])
def test_separate_rstd_kernel_matches(m, k, n_out, gs, monkeypatch):
    """The tile kernel above RSTD_SPLIT_M rows reads the row statistic from its own kernel: same codes and
    scales as the in-kernel statistic (same function, same chunking) and the reference's."""
    import importlib
    fq = importlib.import_module("atom_ao.ops.fused_quantize")
    x, w, perm = _inputs(m, k, torch.bfloat16, seed=3 * m)
    args = (x.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), n_out, gs, 0.9, True)
    fused = rmsnorm_quantize_triton(*args, kernel="tile")
    monkeypatch.setattr(fq, "RSTD_SPLIT_M", 0)
    split = rmsnorm_quantize_triton(*args, kernel="tile")
    if DEVICE == "cpu":  # the interpreter sums in one order; on a GPU the tree follows the layout
        for a, b in zip(fused, split):
            assert torch.equal(a, b)
    assert_quantized_close(split, rmsnorm_quantize_ref(x, w, 1e-6, perm, n_out, gs, 0.9, True), gs)


def test_reference_is_quantize_of_the_norm():
    """The reference is literally the unfused pair (what the Inductor pass replaces)."""
    x, w, perm = _inputs(6, 256, torch.bfloat16)
    for cast_first in (False, True):
        normed = rms_norm_ref(x, w, 1e-5, cast_first)
        want = quantize_activation_ref(normed, perm, 64, 64, 0.9)
        got = torch.ops.atom_ao.rmsnorm_quantize(x, w, 1e-5, perm, 64, 64, 0.9, cast_first)
        for g, v in zip(got, want):
            assert torch.equal(g, v)
    # transformers' LlamaRMSNorm rounds to bf16 before the weight: the order matters
    hf = w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
    assert torch.equal(rms_norm_ref(x, w, 1e-5, True), hf)


def test_mixed_dtypes_and_strided_input():
    x, w, perm = _inputs(7, 320, torch.bfloat16, w_dtype=torch.float32)  # fp32 weight: fp32 output
    strided = torch.zeros(7, 640, dtype=torch.bfloat16)[:, ::2]
    strided.copy_(x)
    want = rmsnorm_quantize_ref(x, w, 1e-6, perm, 64, 128, 0.9, True)
    assert_quantized_close(rmsnorm_quantize_triton(strided.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), 64, 128,
                                                   0.9, True), want, 128)


def test_opcheck():
    x, w, perm = _inputs(4, 256, torch.bfloat16)
    opcheck(torch.ops.atom_ao.rmsnorm_quantize.default, (x, w, 1e-6, perm, 64, 64, 0.9, True))
    rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
    opcheck(torch.ops.atom_ao.rmsnorm_quantize.default, (x, w, 1e-6, perm, 64, 64, 0.9, True, False, rstd))


@pytest.mark.parametrize("args, err, match", [
    (dict(x=torch.randn(2, 3, 256)), ValueError, "2-D"),
    (dict(w=torch.randn(128)), ValueError, "weight has shape"),
    (dict(perm=torch.arange(200, dtype=torch.int32)), ValueError, "perm has shape"),
    (dict(n_out=256), ValueError, "n_outliers"),
    (dict(x=torch.randn(2, 256).to(torch.int32)), TypeError, "fp16/bf16/fp32"),
])
def test_bad_inputs_raise(args, err, match):
    a = dict(x=torch.randn(2, 256), w=torch.ones(256), perm=torch.arange(256, dtype=torch.int32), n_out=64)
    a.update(args)
    for fn in (torch.ops.atom_ao.rmsnorm_quantize, rmsnorm_quantize_triton):
        with pytest.raises(err, match=match):
            fn(a["x"], a["w"], 1e-6, a["perm"], a["n_out"], 64, 0.9, False)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 4096])
@pytest.mark.parametrize("k", [4096, 5120])
@pytest.mark.parametrize("cast_before_weight", [False, True])
def test_cuda_real_shapes(m, k, cast_before_weight):
    x, w, perm = _inputs(m, k, torch.bfloat16, seed=m)
    want = rmsnorm_quantize_ref(x, w, 1e-5, perm, 128, 128, 0.9, cast_before_weight)
    got = torch.ops.atom_ao.rmsnorm_quantize(x.cuda(), w.cuda(), 1e-5, perm.cuda(), 128, 128, 0.9, cast_before_weight)
    assert got[0].is_cuda
    # cast_before_weight rounds the normalised value to bf16 before the group max: rare scale ulps
    assert_quantized_close(got, want, 128, producer_ulp=torch.finfo(torch.bfloat16).eps if cast_before_weight else 0.0)


@pytest.mark.parametrize("m, k, n_out, gs", [(1, 200, 32, 64), (9, 1100, 128, 128), (6, 256, 0, 64), (37, 320, 16, 96)])
@pytest.mark.parametrize("cast_before_weight", [False, True])
def test_both_kernels_match(m, k, n_out, gs, cast_before_weight):
    """The streaming kernel (row statistics from their own kernel, the weight loaded once per
    program) and the tile kernel, at any size, against the reference and (the interpreter
    sums in one order) bit for bit against each other."""
    x, w, perm = _inputs(m, k, torch.bfloat16, seed=7 * m)
    want = rmsnorm_quantize_ref(x, w, 1e-6, perm, n_out, gs, 0.9, cast_before_weight)
    args = (x.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), n_out, gs, 0.9, cast_before_weight)
    stream = rmsnorm_quantize_triton(*args, kernel="stream")
    tile = rmsnorm_quantize_triton(*args, kernel="tile")
    ulp = torch.finfo(torch.bfloat16).eps if cast_before_weight else 0.0
    assert_quantized_close(stream, want, gs, producer_ulp=ulp)
    assert_quantized_close(tile, want, gs, producer_ulp=ulp)
    if DEVICE == "cpu" and m > 32:  # both read the statistics of the same kernel
        for a, b in zip(stream, tile):
            assert torch.equal(a, b)


@pytest.mark.parametrize("m", [5, 40])
@pytest.mark.parametrize("kernel", [None, "tile"])
def test_given_rstd_is_used(m, kernel):
    """rstd given (what the Inductor pass passes: the graph's own statistic): bit for bit the
    reference fed the same statistic, on either kernel, at decode and prefill sizes; and a
    different rstd changes the result (it is read, not recomputed)."""
    x, w, perm = _inputs(m, 320, torch.bfloat16, seed=m)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
    want = rmsnorm_quantize_ref(x, w, 1e-6, perm, 16, 64, 0.9, True)
    assert all(torch.equal(a, b) for a, b in zip(want, rmsnorm_quantize_ref(x, w, 0.5, perm, 16, 64, 0.9, True,
                                                                             rstd=rstd)))
    got = rmsnorm_quantize_triton(x.to(DEVICE), w.to(DEVICE), 0.5, perm.to(DEVICE), 16, 64, 0.9, True, kernel=kernel,
                                  rstd=rstd.to(DEVICE))
    if DEVICE == "cpu":
        for g, v in zip(got, want):
            assert torch.equal(g, v)
    assert_quantized_close(got, want, 64, producer_ulp=torch.finfo(torch.bfloat16).eps)
    halved = rmsnorm_quantize_triton(x.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), 16, 64, 0.9, True,
                                     kernel=kernel, rstd=(rstd / 2).to(DEVICE))
    torch.testing.assert_close(halved[1].cpu(), got[1].cpu() / 2, rtol=0.02, atol=0)


def test_bad_rstd_raises():
    x, w, perm = _inputs(4, 256, torch.bfloat16)
    for bad in (torch.ones(3), torch.ones(4, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="rstd must hold 4 float32"):
            torch.ops.atom_ao.rmsnorm_quantize(x, w, 1e-6, perm, 0, 64, 0.9, True, False, bad)


def test_bad_kernel_names():
    x, w, perm = _inputs(2, 256, torch.bfloat16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        rmsnorm_quantize_triton(x, w, 1e-6, perm, 0, 64, 0.9, kernel="rows")
    with pytest.raises(ValueError, match="no asymmetric"):
        rmsnorm_quantize_triton(x, w, 1e-6, perm, 0, 64, 0.9, kernel="stream", asymmetric=True)
