"""The Triton activation quantizer against ``quantize_activation_ref``, bit for bit.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors, in this process:
``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before atom_ao is
imported. ``tests/conftest.py`` sets it (before any test module is imported) and so does this
module when run on its own; ``_interpreted`` below fails loudly if atom_ao was imported
without it anyway. With a GPU the same tests run the compiled kernel on CUDA tensors.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from atom_ao.format import quantize_activation_ref  # noqa: E402
from atom_ao.ops.quantize_activation import (  # noqa: E402
    _quantize_activation_kernel,
    quantize_activation_triton,
)
from atom_ao.weight import outlier_permutation  # noqa: E402
from conftest import outlier_activations  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _interpreted():
    if DEVICE == "cpu":
        from triton.runtime.interpreter import InterpretedFunction

        assert isinstance(_quantize_activation_kernel, InterpretedFunction), (
            "atom_ao was imported before TRITON_INTERPRET=1 was set: the kernel cannot run on CPU"
        )


def _perm(k, n_out, seed=0, kind="random", x=None):
    if kind == "calibrated":  # what quantize_ builds: normal channels in order, outliers last
        return outlier_permutation(x.float().abs().amax(dim=0), n_out)
    return torch.randperm(k, generator=torch.Generator().manual_seed(seed)).to(torch.int32)


def _same_bits(got, want, what):
    """Equal values and dtypes; float tensors bit for bit (0.0 != -0.0), NaN where NaN."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    got = got.cpu()
    if got.is_floating_point():
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan), f"{what}: NaN at different places"
        got, want = got[~nan].view(torch.int32), want[~nan].view(torch.int32)
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"{what}: {len(bad)} mismatches, first at {bad[:5].tolist()}")


def _check(x, perm, n_out, gs, clip=0.9, device=DEVICE):
    """The launcher on ``device`` against the reference on CPU."""
    want = quantize_activation_ref(x.cpu(), perm.cpu(), n_out, gs, clip)
    got = quantize_activation_triton(x.to(device), perm.to(device), n_out, gs, clip)
    for name, g, w in zip(("packed", "scale", "outliers", "outlier_scale"), got, want):
        _same_bits(g, w, name)
    return got


@pytest.mark.parametrize(
    "m, k, n_out, gs",
    [
        (1, 200, 32, 64),    # decode row; 168 normal channels padded to 192
        (3, 576, 128, 128),  # 448 normal channels padded to 512
        (17, 200, 32, 64),   # M off the row block
        (3, 256, 0, 64),     # no outliers: nothing launched for them
        (5, 320, 16, 96),    # group_size 96: half-groups of 48, not a power of two
        (5, 448, 64, 128),   # no padding (no column masks), a part-filled block of groups
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_matches_reference(m, k, n_out, gs, dtype):
    x, _ = outlier_activations(m, k, dtype=dtype, seed=m + k)
    _check(x, _perm(k, n_out, seed=k), n_out, gs)


@pytest.mark.parametrize("clip", [1.0, 0.85, 1.3])
def test_clip_ratios_and_calibrated_perm(clip):
    x, _ = outlier_activations(6, 576, n_outlier_channels=8, dtype=torch.bfloat16, seed=3)
    _check(x, _perm(576, 128, kind="calibrated", x=x), 128, 128, clip)


@pytest.mark.parametrize("group_major", [True, False])
def test_scales_group_major(monkeypatch, group_major):
    """The group scales come out (M, G) stored group by group (strides (1, M)), the layout the swap
    GEMM reads fastest; GROUP_MAJOR_SCALES = False (for side-by-side timing) writes them row-major.
    Both hold the reference's values."""
    import importlib
    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    monkeypatch.setattr(qa, "GROUP_MAJOR_SCALES", group_major)
    x, _ = outlier_activations(6, 448, dtype=torch.bfloat16, seed=5)
    got = _check(x, _perm(448, 64, seed=2), 64, 128)
    assert got[1].shape == (6, 3)
    assert got[1].stride() == ((1, 6) if group_major else (3, 1))


def test_non_contiguous_input():
    x, _ = outlier_activations(9, 400, dtype=torch.float16, seed=1)
    perm = _perm(400, 32)
    col_major = x.t().contiguous().t()
    strided = torch.zeros(9, 800, dtype=torch.float16)[:, ::2]
    strided.copy_(x)
    assert not col_major.is_contiguous() and not strided.is_contiguous()
    want = _check(x, perm, 32, 64)
    for xv in (col_major, strided):
        for g, w in zip(_check(xv, perm, 32, 64), want):
            assert torch.equal(g, w)


def test_zero_rows_nan_inf_and_ties():
    m, k, n_out, gs = 6, 200, 32, 64
    perm = _perm(k, n_out, seed=7)
    x, _ = outlier_activations(m, k, dtype=torch.float32, seed=5)
    x[1] = 0.0  # zero groups and zero outliers: scale 0, q 0
    x[2, perm[5]] = float("nan")  # NaN in the first group of row 2
    x[2, perm[k - 3]] = float("nan")  # and in its outliers
    x[3, perm[70]] = float("inf")  # inf in the second group of row 3
    x[3, perm[k - 1]] = -float("inf")
    # row 4: exact halves after scaling (amax 7 -> scale 1 for clip 1; amax 127 for outliers)
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 6.5, -7.0, 7.0])
    x[4] = 0.25
    x[4, perm[: len(ties)]] = ties
    x[4, perm[k - n_out:k - n_out + 5]] = torch.tensor([0.5, 1.5, -2.5, 126.5, 127.0])
    x[5] = -0.0  # negative zeros
    packed, scale, outl, outl_scale = _check(x, perm, n_out, gs, clip=1.0)
    assert scale[2, 0].isnan() and not scale[2, 1:].isnan().any() and outl_scale[2].isnan()
    assert scale[3, 1].isinf() and outl_scale[3].isinf()
    assert (scale[1] == 0).all() and (packed[1] == 0).all()
    for dtype in (torch.float16, torch.bfloat16):
        _check(x.to(dtype), perm, n_out, gs, clip=1.0)


@pytest.mark.parametrize("lanes_first", [False, True])
def test_both_tile_arrangements(monkeypatch, lanes_first):
    """The launcher picks the tile's dimension order by Triton version (a layout choice):
    either order must give the same bits."""
    import atom_ao.ops.quantize_activation  # noqa: F401  (the module, not the op)

    qmod = sys.modules["atom_ao.ops.quantize_activation"]
    monkeypatch.setattr(qmod, "_LANES_FIRST", lanes_first)
    x, _ = outlier_activations(7, 576, dtype=torch.bfloat16, seed=11)
    _check(x, _perm(576, 128, seed=2), 128, 128)
    _check(x[:, :320], _perm(320, 16, seed=3), 16, 96)


def test_perm_read_before_the_pdl_wait_only_as_given(monkeypatch):
    # a perm the launcher must convert is written by the kernel just before the quantizer: read
    # after the wait then
    import importlib

    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    perm = torch.arange(256, dtype=torch.int32, device=DEVICE)
    dev = perm.device  # with its index, as a launch's input has it
    monkeypatch.setattr(qa, "PERM_BEFORE_WAIT", True)
    assert qa.perm_before_wait(perm, dev)
    assert not qa.perm_before_wait(perm.long(), dev)  # converted to int32 first
    assert not qa.perm_before_wait(torch.arange(512, dtype=torch.int32, device=dev)[::2], dev)  # made contiguous
    assert not qa.perm_before_wait(perm, torch.device("meta"))  # copied to the device
    monkeypatch.setattr(qa, "PERM_BEFORE_WAIT", False)
    assert not qa.perm_before_wait(perm, dev)


def test_no_rows():
    x = torch.empty(0, 200, dtype=torch.bfloat16)
    got = quantize_activation_triton(x.to(DEVICE), _perm(200, 32).to(DEVICE), 32, 64, 0.9)
    assert [tuple(t.shape) for t in got] == [(0, 96), (0, 3), (0, 32), (0,)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 4096])
@pytest.mark.parametrize("k", [4096, 11008])
@pytest.mark.parametrize("perm_kind", ["random", "calibrated"])
def test_cuda_op_matches_reference_real_shapes(m, k, perm_kind):
    x, _ = outlier_activations(m, k, n_outlier_channels=16, dtype=torch.bfloat16, seed=m)
    if m >= 16:
        x[3, :64] = float("nan")
        x[5] = 0.0
        x[7, 100] = float("inf")
    perm = _perm(k, 128, seed=k, kind=perm_kind, x=x)
    want = quantize_activation_ref(x, perm, 128, 128, 0.9)
    got = torch.ops.atom_ao.quantize_activation(x.cuda(), perm.cuda(), 128, 128, 0.9)
    assert got[0].is_cuda
    for name, g, w in zip(("packed", "scale", "outliers", "outlier_scale"), got, want):
        _same_bits(g, w, name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cuda_dtypes_ties_and_no_outliers(dtype):
    test_zero_rows_nan_inf_and_ties()
    x, _ = outlier_activations(64, 4096, dtype=dtype, seed=1)
    _check(x, _perm(4096, 0), 0, 128, device="cuda")
    _check(x, _perm(4096, 256), 256, 64, device="cuda")


@pytest.mark.parametrize("explicit", [False, True])
def test_config_launch_same_bits(explicit):
    """A config launched on its own (``config=``, what the benchmarks time) gives the autotuner's
    bits: 4-row blocks and 8 programs, so each program walks several row blocks."""
    import triton

    from atom_ao.ops.quantize_activation import configs_for
    x, _ = outlier_activations(70, 640, dtype=torch.bfloat16, seed=5)
    perm = outlier_permutation(x.float().pow(2).sum(0), 64)
    x, perm = x.to(DEVICE), perm.to(DEVICE)
    want = quantize_activation_ref(x.cpu(), perm.cpu(), 64, 128, 0.9)
    config = configs_for(70)[0]
    if explicit:
        config = triton.Config({"BLOCK_M": 4, "GPB": 2, "LANES": 16, "PROGS": 8}, num_warps=4, num_stages=1)
    got = quantize_activation_triton(x, perm, 64, 128, 0.9, config=config)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w)
