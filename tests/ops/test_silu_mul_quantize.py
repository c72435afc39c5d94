"""``atom_ao::silu_mul_quantize``: the fused SiLU(gate) * up + permute + quantize kernel against
``quantize_activation_ref(F.silu(gate) * up)``, under Triton's interpreter on CPU (on the GPU
with one). Integer codes match exactly except rare rounding-boundary flips (fused_compare)."""

import os

import pytest
import torch
from torch.library import opcheck

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.ops.silu_mul_quantize import silu_mul_quantize_ref, silu_mul_quantize_triton  # noqa: E402
from conftest import outlier_activations  # noqa: E402
from fused_compare import assert_quantized_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(m, k, dtype, seed=0, identity=False):
    gate, _ = outlier_activations(m, k, dtype=dtype, seed=seed)
    up, _ = outlier_activations(m, k, dtype=dtype, seed=seed + 1)  # outliers in other channels
    g = torch.Generator().manual_seed(seed + 2)
    perm = torch.arange(k) if identity else torch.randperm(k, generator=g)
    return gate, up, perm.to(torch.int32)


@pytest.mark.parametrize("m, k, n_out, gs", [(1, 512, 128, 128), (5, 320, 16, 96), (9, 200, 32, 64), (3, 256, 0, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_matches_reference(m, k, n_out, gs, dtype):
    gate, up, perm = _inputs(m, k, dtype, seed=m + k)
    want = silu_mul_quantize_ref(gate, up, perm, n_out, gs, 0.9)
    assert_quantized_close(silu_mul_quantize_triton(gate.to(DEVICE), up.to(DEVICE), perm.to(DEVICE), n_out, gs, 0.9),
                           want, gs)


@pytest.mark.parametrize("m, k, n_out, gs", [(1, 512, 128, 128), (7, 1100, 64, 96), (40, 320, 16, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_kernels_match(m, k, n_out, gs, dtype):
    """The streaming kernel (the default) and the tile kernel against the reference, and bit for
    bit against each other (same producer math, no sums)."""
    gate, up, perm = _inputs(m, k, dtype, seed=m)
    want = silu_mul_quantize_ref(gate, up, perm, n_out, gs, 0.9)
    args = (gate.to(DEVICE), up.to(DEVICE), perm.to(DEVICE), n_out, gs, 0.9)
    stream = silu_mul_quantize_triton(*args, kernel="stream")
    tile = silu_mul_quantize_triton(*args, kernel="tile")
    assert_quantized_close(stream, want, gs)
    for a, b in zip(stream, tile):
        assert torch.equal(a, b)


def test_gate_and_up_with_other_column_strides():
    """up with another column stride than gate (a transposed view) takes the tile kernel."""
    gate, up, perm = _inputs(5, 256, torch.bfloat16, seed=3)
    up_t = up.t().contiguous().t()
    got = silu_mul_quantize_triton(gate.to(DEVICE), up_t.to(DEVICE), perm.to(DEVICE), 16, 64, 0.9)
    assert_quantized_close(got, silu_mul_quantize_ref(gate, up, perm, 16, 64, 0.9), 64)


def test_identity_perm_after_folding():
    """down_proj after fold_mlp_permutations: identity perm (contiguous gathers), same result."""
    gate, up, perm = _inputs(6, 512, torch.bfloat16, identity=True)
    want = silu_mul_quantize_ref(gate, up, perm, 128, 128, 0.9)
    assert_quantized_close(silu_mul_quantize_triton(gate.to(DEVICE), up.to(DEVICE), perm.to(DEVICE), 128, 128, 0.9),
                           want, 128)


def test_reference_is_quantize_of_the_product():
    gate, up, perm = _inputs(4, 256, torch.bfloat16)
    want = torch.ops.atom_ao.quantize_activation(torch.nn.functional.silu(gate) * up, perm, 64, 64, 0.9)
    for g, w in zip(torch.ops.atom_ao.silu_mul_quantize(gate, up, perm, 64, 64, 0.9), want):
        assert torch.equal(g, w)


def test_opcheck():
    gate, up, perm = _inputs(4, 256, torch.bfloat16)
    opcheck(torch.ops.atom_ao.silu_mul_quantize.default, (gate, up, perm, 64, 64, 0.9))


@pytest.mark.parametrize("args, err, match", [
    (dict(up=torch.randn(2, 128)), ValueError, "must match"),
    (dict(up=torch.randn(2, 256, dtype=torch.float16)), ValueError, "must match"),
    (dict(perm=torch.arange(255, dtype=torch.int32)), ValueError, "perm has shape"),
    (dict(gate=torch.randn(256), up=torch.randn(256)), ValueError, "2-D"),
    (dict(n_out=-16), ValueError, "n_outliers"),
])
def test_bad_inputs_raise(args, err, match):
    a = dict(gate=torch.randn(2, 256), up=torch.randn(2, 256), perm=torch.arange(256, dtype=torch.int32), n_out=64)
    a.update(args)
    for fn in (torch.ops.atom_ao.silu_mul_quantize, silu_mul_quantize_triton):
        with pytest.raises(err, match=match):
            fn(a["gate"], a["up"], a["perm"], a["n_out"], 64, 0.9)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 4096])
@pytest.mark.parametrize("k", [11008, 14336])
def test_cuda_real_shapes(m, k):
    gate, up, perm = _inputs(m, k, torch.bfloat16, seed=m)
    want = silu_mul_quantize_ref(gate, up, perm, 128, 128, 0.9)
    got = torch.ops.atom_ao.silu_mul_quantize(gate.cuda(), up.cuda(), perm.cuda(), 128, 128, 0.9)
    assert got[0].is_cuda
    assert_quantized_close(got, want, 128)
