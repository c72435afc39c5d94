"""Asymmetric INT4 activations (scale and zero point per token and group, ``atom_ao.format``):
the reference against its definition, the Triton quantizers (interpreter on CPU, CUDA with a
GPU) against the reference: bit for bit without a producer, within boundary flips fused."""

import os

import pytest
import torch
from torch.library import opcheck

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.format import (  # noqa: E402
    permute_and_pad, quantize_activation_ref, quantize_int4_groups_asym, unpack_int4,
)
from atom_ao.ops.quantize_activation import quantize_activation_triton  # noqa: E402
from atom_ao.ops.rmsnorm_quantize import rmsnorm_quantize_ref, rmsnorm_quantize_triton  # noqa: E402
from atom_ao.ops.silu_mul_quantize import silu_mul_quantize_ref, silu_mul_quantize_triton  # noqa: E402
from atom_ao.weight import outlier_permutation  # noqa: E402
from conftest import outlier_activations, sqnr  # noqa: E402
from fused_compare import assert_quantized_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(m, k, n_out, dtype=torch.bfloat16, seed=0, shift=0.0):
    x, _ = outlier_activations(m, k, dtype=torch.float32, seed=seed)
    x = (x + shift).to(dtype)  # shift: one-sided groups, where a zero point pays
    perm = outlier_permutation(x.float().pow(2).sum(0), n_out)
    return x, perm


def test_reference_definition():
    x, perm = _inputs(5, 640, 64, shift=3.0)
    q, s, qo, so = quantize_activation_ref(x, perm, 64, 128, 0.9, asymmetric=True)
    g = s.shape[1] // 2
    scale, zero = s[:, :g], s[:, g:]
    normal, _ = permute_and_pad(x, perm, 64, 128)
    codes = unpack_int4(q, 128).float().reshape(5, g, 128)
    assert codes.min() >= -8 and codes.max() <= 7
    lo = normal.reshape(5, g, 128).amin(-1) * 0.9
    assert torch.equal(zero, lo + 8 * scale)
    # every element within half a step of its group's grid (clipped ones excepted: clip 0.9)
    deq = codes * scale[..., None] + zero[..., None]
    inside = (normal.reshape(5, g, 128) >= lo[..., None]) & (normal.reshape(5, g, 128) <= 0.9 * normal.reshape(
        5, g, 128).amax(-1, keepdim=True))
    err = (deq - normal.reshape(5, g, 128)).abs()
    assert (err[inside] <= scale[..., None].expand_as(err)[inside] * 0.5 + 1e-6).all()
    # one-sided groups: the zero point halves the step of the symmetric grid, so the error drops
    sym = quantize_activation_ref(x, perm, 64, 128, 1.0)
    asym = quantize_activation_ref(x, perm, 64, 128, 1.0, asymmetric=True)
    deq_sym = (unpack_int4(sym[0], 128).float().reshape(5, g, 128) * sym[1][..., None]).reshape(5, -1)
    a_codes = unpack_int4(asym[0], 128).float().reshape(5, g, 128)
    deq_asym = (a_codes * asym[1][:, :g, None] + asym[1][:, g:, None]).reshape(5, -1)
    ref = normal.reshape(5, -1)
    assert sqnr(ref, deq_asym) > sqnr(ref, deq_sym) + 4


def test_constant_and_nan_groups():
    x = torch.full((2, 256), 0.5)
    x[1, 3] = float("nan")
    q, s, zero = quantize_int4_groups_asym(x, 128)
    assert torch.equal(s[0], torch.zeros(2)) and torch.equal(zero[0], torch.full((2,), 0.5))  # exact
    assert s[1, 0].isnan() and not s[1, 1].isnan()


@pytest.mark.parametrize("m, k, n_out, gs", [(3, 640, 64, 128), (5, 320, 16, 96), (4, 256, 0, 64), (2, 1100, 128, 128)])
def test_quantize_activation_kernel_bit_exact(m, k, n_out, gs):
    x, perm = _inputs(m, k, n_out, seed=m + k, shift=1.5)
    x[0, perm[5]] = 0.0  # a few exact zeros and a whole constant group in row 1
    x[min(1, m - 1), perm[:gs]] = 2.0
    want = quantize_activation_ref(x, perm, n_out, gs, 0.9, asymmetric=True)
    got = quantize_activation_triton(x.to(DEVICE), perm.to(DEVICE), n_out, gs, 0.9, asymmetric=True)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g.cpu(), w)


def test_fused_kernels_match():
    x, perm = _inputs(6, 640, 64, seed=1, shift=1.0)
    w = (torch.rand(640) + 0.5).to(torch.bfloat16)
    got = rmsnorm_quantize_triton(x.to(DEVICE), w.to(DEVICE), 1e-6, perm.to(DEVICE), 64, 128, 0.9, True,
                                  asymmetric=True)
    want = rmsnorm_quantize_ref(x, w, 1e-6, perm, 64, 128, 0.9, True, asymmetric=True)
    _assert_asym_close(got, want, 128)
    up, _ = _inputs(6, 640, 64, seed=2)
    ident = torch.arange(640, dtype=torch.int32)
    got = silu_mul_quantize_triton(x.to(DEVICE), up.to(DEVICE), ident.to(DEVICE), 64, 128, 0.9,
                                   asymmetric=True)
    _assert_asym_close(got, silu_mul_quantize_ref(x, up, ident, 64, 128, 0.9, asymmetric=True), 128)


def _assert_asym_close(got, want, gs):
    g = want[1].shape[1] // 2
    # scales and zero points are checked like scales; codes may flip by one at a boundary
    assert_quantized_close((got[0], got[1][:, :g], got[2], got[3]), (want[0], want[1][:, :g], want[2], want[3]), gs)
    torch.testing.assert_close(got[1][:, g:].cpu(), want[1][:, g:], rtol=1e-5, atol=1e-6)


def test_opcheck_asymmetric():
    x, perm = _inputs(4, 256, 64)
    opcheck(torch.ops.atom_ao.quantize_activation.default, (x, perm, 64, 64, 0.9, True))
    w = torch.ones(256, dtype=torch.bfloat16)
    opcheck(torch.ops.atom_ao.rmsnorm_quantize.default, (x, w, 1e-6, perm, 64, 64, 0.9, True, True))
    opcheck(torch.ops.atom_ao.silu_mul_quantize.default, (x, x, perm, 64, 64, 0.9, True))
