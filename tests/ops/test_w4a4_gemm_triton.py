"""The Triton W4A4 GEMM against the reference op (interpreter on CPU, compiled on the GPU)."""

import os
import subprocess
import sys
import tempfile

import pytest
import torch

from atom_ao.format import quantize_activation_ref
from atom_ao.ops.w4a4_gemm import w4a4_gemm_ref, w4a4_gemm_triton
from atom_ao.weight import quantize_weight
from conftest import outlier_activations, sqnr

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _operands(m, n, k, n_out, gs, dtype, bias, seed=0, device=DEVICE):
    x, _ = outlier_activations(m, k, dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(k, generator=gen).to(torch.int32)
    w = torch.randn(n, k, generator=gen) * 0.05
    wq = quantize_weight(w, perm, n_out, gs, clip_ratio=0.9)
    a = quantize_activation_ref(x, perm, n_out, gs, 0.9)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    args = (*a, wq["qdata"], wq["scale"], wq["outlier_qdata"], wq["outlier_scale"], b)
    return [t.to(device) if t is not None else None for t in args]


def _check(m, n, k, n_out, gs, dtype, bias, device=DEVICE, splits=None, path=None):
    args = _operands(m, n, k, n_out, gs, dtype, bias, device=device)
    got = w4a4_gemm_triton(*args, gs, dtype, splits=splits, path=path).float().cpu()
    cpu_args = [t.cpu() if t is not None else None for t in args]
    want32 = w4a4_gemm_ref(*cpu_args, gs, torch.float32)
    # INT32 group sums are exact: only the order of the FP32 scaling differs (and the final cast)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want32, rtol=tol, atol=tol * want32.abs().max().item())
    assert torch.equal(w4a4_gemm_ref(*cpu_args, gs, dtype).isnan(), got.isnan())
    return got


@pytest.mark.parametrize(
    "m, n, k, n_out, gs",
    [
        # M = 1: the dp4a stream kernel (w4a4_gemv); up to 64: the swap kernel; then the tile kernel
        (1, 40, 200, 32, 64),   # decode row, K padded, N not a multiple of the tile
        (16, 64, 256, 0, 64),   # no outliers
        (3, 48, 192, 16, 64),   # 16 outliers: one masked outlier step
        (19, 33, 320, 64, 128),  # M and N off the tiles
        (40, 64, 256, 0, 64),   # no outliers, plain group loop
    ],
)
@pytest.mark.parametrize("dtype, bias", [(torch.bfloat16, True), (torch.float16, False), (torch.float32, True)])
def test_triton_gemm_matches_reference(m, n, k, n_out, gs, dtype, bias):
    _check(m, n, k, n_out, gs, dtype, bias)


@pytest.mark.parametrize("m, splits", [(1, 2), (3, 3), (16, 5), (40, 3)])
def test_split_k_matches_reference(m, splits):
    # split-K: float32 partials of each share of the groups, summed by a second kernel; the outlier
    # block and the bias only in the first share. 5 groups: even and uneven shares (3+2, 2+2+1, 1 each)
    _check(m, 48, 5 * 64 + 32, 32, 64, torch.bfloat16, True, splits=splits)


def test_split_k_default_and_bad_splits():
    from atom_ao.ops.w4a4_gemm import _split_k

    assert _split_k(1, 64, 32, torch.device("cpu")) > 1  # few tiles, many groups: split
    assert _split_k(1, 64, 4, torch.device("cpu")) == 1  # too few groups to share
    assert _split_k(4096, 64, 32, torch.device("cpu")) == 1  # large M fills the GPU by itself
    args = _operands(2, 32, 5 * 64 + 32, 32, 64, torch.bfloat16, False)
    assert args[1].shape[1] == 5
    for bad in (0, 4, 6):  # 5 groups: 4 splits (2+2+1+0) would leave a share empty
        with pytest.raises(ValueError, match="splits"):
            w4a4_gemm_triton(*args, 64, torch.bfloat16, splits=bad)


def test_triton_gemm_nan_row_stays_nan():
    args = _operands(4, 32, 256, 32, 128, torch.bfloat16, False)
    args[1][2, 0] = float("nan")  # a NaN group scale of token 2
    out = w4a4_gemm_triton(*args, 128, torch.bfloat16)
    assert out[2].isnan().all() and not out[[0, 1, 3]].isnan().any()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 256, 4096])
@pytest.mark.parametrize("n, k", [(4096, 4096), (4096, 11008), (12288, 4096)])
def test_triton_gemm_real_shapes_gpu(m, n, k):
    got = _check(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    assert got.isfinite().all()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, 16, 64])
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_triton_gemm_split_k_gpu(m, splits):
    _check(m, 4096, 4096 + 128, 128, 128, torch.bfloat16, True, device="cuda", splits=splits)


@pytest.mark.gpu
def test_op_dispatches_to_triton_on_cuda():
    args = _operands(8, 256, 512, 128, 128, torch.bfloat16, True, device="cuda")
    y = torch.ops.atom_ao.w4a4_gemm(*args, 128, torch.bfloat16)
    cpu = [t.cpu() if t is not None else None for t in args]
    assert sqnr(w4a4_gemm_ref(*cpu, 128, torch.float32), y.float().cpu()) > 40


@pytest.mark.parametrize(
    "m, n, k, n_out, gs, dtype, bias",
    [
        (19, 33, 320, 64, 128, torch.bfloat16, True),  # M and N off the tiles, K padded to the groups
        (40, 64, 256, 0, 64, torch.float16, False),   # no outliers
        (5, 48, 192, 16, 64, torch.float32, True),    # one masked outlier step
    ],
)
def test_unpacked_path_equals_packed_path(m, n, k, n_out, gs, dtype, bias):
    # the large-M path (INT8 copies of both operands, then a plain INT8 group GEMM) sums the same
    # INT32 group dots and scales them in the same order: bit-identical to the packed kernel
    args = _operands(m, n, k, n_out, gs, dtype, bias)
    unpacked = w4a4_gemm_triton(*args, gs, dtype, path="unpacked")
    torch.testing.assert_close(unpacked, w4a4_gemm_triton(*args, gs, dtype, path="packed", splits=1), rtol=0, atol=0)
    _check(m, n, k, n_out, gs, dtype, bias)  # and the reference


def test_unpack_int4_rows_matches_reference_order():
    from atom_ao.format import unpack_int4
    from atom_ao.ops.w4a4_gemm_unpacked import unpack_int4_rows

    packed = torch.randint(0, 256, (7, 3 * 64), dtype=torch.uint8)  # 3 groups of 128
    torch.testing.assert_close(unpack_int4_rows(packed, 128), unpack_int4(packed, 128), rtol=0, atol=0)


def test_bad_path_is_refused():
    args = _operands(4, 32, 256, 32, 128, torch.bfloat16, False)
    with pytest.raises(ValueError, match="path"):
        w4a4_gemm_triton(*args, 128, torch.bfloat16, path="fast")
    with pytest.raises(ValueError, match="split-K"):
        w4a4_gemm_triton(*args, 128, torch.bfloat16, path="unpacked", splits=2)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [256, 512, 4096])
@pytest.mark.parametrize("n, k", [(4096, 4096), (4096, 11008), (12288, 4096)])
def test_unpacked_path_real_shapes_gpu(m, n, k):
    args = _operands(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    unpacked = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="unpacked")
    torch.testing.assert_close(unpacked, w4a4_gemm_triton(*args, 128, torch.bfloat16, path="packed", splits=1),
                               rtol=0, atol=0)
    _check(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")


@pytest.mark.parametrize("m, n, k, n_out, gs", [(2, 40, 200, 32, 64), (16, 64, 256, 0, 64), (19, 33, 320, 64, 128),
                                                (40, 72, 5 * 64 + 32, 32, 64)])
@pytest.mark.parametrize("dtype, bias", [(torch.bfloat16, True), (torch.float16, False)])
def test_swap_path_equals_tile_path(m, n, k, n_out, gs, dtype, bias):
    # weights on the MMA's M side, tokens on N: the same INT32 group sums scaled in the same order,
    # so the same bits as the tile kernel, split or not; and the reference to float rounding
    args = _operands(m, n, k, n_out, gs, dtype, bias)
    for splits in (1, 2):
        swap = w4a4_gemm_triton(*args, gs, dtype, path="swap", splits=splits)
        torch.testing.assert_close(swap, w4a4_gemm_triton(*args, gs, dtype, path="packed", splits=splits), rtol=0, atol=0)
    _check(m, n, k, n_out, gs, dtype, bias)  # the default path (swap for 2..64 tokens)


@pytest.mark.parametrize("m, n", [(64, 128), (3, 256)])
def test_swap_unmasked_loop_same_bits(monkeypatch, m, n):
    """Full tiles (N a multiple of 128, M of 64) take the swap kernel's unmasked main loop (with
    N only: the weight loads unmasked, the token loads masked): the same bits as every load masked."""
    import importlib
    gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")  # the package re-exports the op under that name
    args = _operands(m, n, 256, 32, 64, torch.bfloat16, True)
    fast = w4a4_gemm_triton(*args, 64, torch.bfloat16, path="swap", splits=2)
    monkeypatch.setattr(gemm, "SWAP_UNMASKED", False)
    torch.testing.assert_close(fast, w4a4_gemm_triton(*args, 64, torch.bfloat16, path="swap", splits=2), rtol=0, atol=0)
    _check(m, n, 256, 32, 64, torch.bfloat16, True)


@pytest.mark.parametrize("m, n, k, n_out", [(64, 128, 9 * 64, 32), (3, 40, 7 * 64, 16), (5, 48, 4 * 64, 0)])
def test_swap_outliers_in_the_first_split_only(monkeypatch, m, n, k, n_out):
    """OUT_SHARE: with split-K the outlier block runs in the first split only, whose share is that
    many groups shorter (20: down to none). Against the reference at every split count that leaves
    the even shares non-empty (the weighted ones may come out empty), and against the even shares to float rounding
    (the splits' partial sums are grouped differently)."""
    import importlib
    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    args = _operands(m, n, k, n_out, 64, torch.bfloat16, True)
    cpu_args = [t.cpu() if t is not None else None for t in args]
    want = w4a4_gemm_ref(*cpu_args, 64, torch.float32)
    from atom_ao.ops.gemm_tiles import splits_fit
    for splits in [s for s in (1, 2, 3, 4, 5) if splits_fit(args[1].shape[1], s)]:
        monkeypatch.setattr(swap, "OUT_SHARE", 0)
        even = w4a4_gemm_triton(*args, 64, torch.bfloat16, path="swap", splits=splits).float().cpu()
        for share in (3, 20):
            monkeypatch.setattr(swap, "OUT_SHARE", share)
            got = w4a4_gemm_triton(*args, 64, torch.bfloat16, path="swap", splits=splits).float().cpu()
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
            torch.testing.assert_close(got, even, rtol=0, atol=2 ** -7 * even.abs().max().item())


def test_swap_share_covers_the_groups_once():
    # _share's host-side twin: every group in exactly one share, the first OUT_SHARE shorter
    def shares(g, splits, w):
        per = -(-(g + w) // splits)
        return [(max(s * per - w, 0), min(max((s + 1) * per - w, 0), g)) for s in range(splits)]

    for g, splits, w in ((32, 4, 2), (86, 8, 2), (7, 2, 3), (4, 2, 20), (31, 16, 2)):
        covered = [i for lo, hi in shares(g, splits, w) for i in range(lo, hi)]
        assert covered == list(range(g))
    assert shares(32, 4, 2) == [(0, 7), (7, 16), (16, 25), (25, 32)]


@pytest.mark.parametrize("m, n, k", [(64, 128, 5 * 64), (3, 40, 7 * 64)])
def test_swap_scale_layouts_same_bits(m, n, k):
    """The swap kernel with group-major scales ((M, G) and (N, G) with unit row stride): the same
    bits as row-major scales, over full and partial tiles and odd shares (7 groups in 2 splits)."""
    args = _operands(m, n, k, 32, 64, torch.bfloat16, True)
    group_major = list(args)
    group_major[1], group_major[5] = (t.t().contiguous().t() for t in (args[1], args[5]))
    assert group_major[1].stride(0) == 1 and group_major[5].stride(0) == 1
    for splits in (1, 2):
        want = w4a4_gemm_triton(*args, 64, torch.bfloat16, path="swap", splits=splits)
        got = w4a4_gemm_triton(*group_major, 64, torch.bfloat16, path="swap", splits=splits)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    _check(m, n, k, 32, 64, torch.bfloat16, True)


@pytest.mark.parametrize("m, path", [(1, "gemv"), (1, "swap"), (5, "swap"), (5, "packed"), (5, "unpacked"),
                                     (70, "packed")])
def test_every_path_takes_either_token_scale_layout(m, path):
    """The quantizers write the token scales group-major (``empty_outputs``); every GEMM path reads
    them by their strides: the same bits as with row-major scales (and group-major weight scales)."""
    args = _operands(m, 72, 5 * 64, 16, 64, torch.bfloat16, True)
    want = w4a4_gemm_triton(*args, 64, torch.bfloat16, path=path)
    other = list(args)
    other[1] = args[1].t().contiguous().t() if args[1].is_contiguous() else args[1].contiguous()
    other[5] = args[5].t().contiguous().t()
    assert other[1].stride() != args[1].stride() or m == 1
    torch.testing.assert_close(w4a4_gemm_triton(*other, 64, torch.bfloat16, path=path), want, rtol=0, atol=0)


def test_swap_path_refuses_large_m():
    args = _operands(72, 32, 256, 0, 128, torch.bfloat16, False)
    with pytest.raises(ValueError, match="swap"):
        w4a4_gemm_triton(*args, 128, torch.bfloat16, path="swap")


def test_default_path_by_m():
    from atom_ao.ops.w4a4_gemm import UNPACKED_MIN_M, default_path
    from atom_ao.ops.w4a4_gemm_swap import SWAP_MAX_M
    assert [default_path(m) for m in (1, 2, SWAP_MAX_M, SWAP_MAX_M + 1, UNPACKED_MIN_M)] == \
        ["gemv", "swap", "swap", "packed", "unpacked"]
    assert default_path(UNPACKED_MIN_M, splits=2) == "packed"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 2, 16, 33, 64])
@pytest.mark.parametrize("n, k", [(4096, 4096 + 128), (12288, 4096 + 128), (4096, 11008 + 128)])
def test_swap_path_real_shapes_gpu(m, n, k):
    args = _operands(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    swap = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="swap")
    tiles = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="packed", splits=1)
    # the default split-K of each path may differ: float32 partials summed in another order
    torch.testing.assert_close(swap.float(), tiles.float(), rtol=1e-2, atol=1e-2 * tiles.float().abs().max().item())
    _check(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [16, 64])
@pytest.mark.parametrize("n, k", [(4096, 4096 + 128), (4096, 11008 + 128)])
def test_swap_out_share_gpu(monkeypatch, m, n, k):
    """OUT_SHARE (outliers in the first split only) at Llama-2-7B o / down shapes, the rule's split
    and 8: the reference (the module's default), and the even shares to float rounding."""
    import importlib
    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    _check(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    default = swap.OUT_SHARE
    args = _operands(m, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    for splits in (None, 8):
        monkeypatch.setattr(swap, "OUT_SHARE", 0)
        even = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="swap", splits=splits).float()
        for share in sorted({2, 3, default} - {0}):
            monkeypatch.setattr(swap, "OUT_SHARE", share)
            got = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="swap", splits=splits).float()
            torch.testing.assert_close(got, even, rtol=0, atol=2 ** -7 * even.abs().max().item())


def test_swap_split_k_rule():
    from atom_ao.ops.w4a4_gemm_swap import swap_split_k
    for m in (2, 16, 32, 64):
        for n, groups in ((4096, 31), (12288, 31), (22016, 31), (4096, 85), (8192, 63), (64, 3), (64, 1)):
            s = swap_split_k(m, n, groups, sms=132)
            per = -(-groups // s)
            assert 1 <= s <= 16 and -(-groups // per) == s  # no empty split
            assert s == 1 or per >= (3 if m <= 16 else 4)
    # up to 16 tokens: 64-row tiles, ~3 programs a SM (the H200's best splits on cold weights)
    assert [swap_split_k(1, n, g, 132) for n, g in ((12288, 31), (4096, 31), (22016, 31), (4096, 85))] == [4, 8, 2, 8]
    # 32 tokens: 128-row tiles; a wide weight (172 tiles) fills 132 SMs unsplit, a narrow one is split
    assert swap_split_k(32, 22016, 31, 132) == 1 and swap_split_k(32, 4096, 85, 132) == 8
    # past 32 tokens: 64-row tiles, twice the splits within 3 programs a SM (the H200's best splits,
    # cold weights): qkv and the unfused gate 2, the fused gate/up 1, o 4; down's long shares once
    # more while twice the programs fit 4 a SM: 8
    assert [swap_split_k(64, n, g, 132) for n, g in ((12288, 31), (11008, 31), (22016, 31), (4096, 31), (4096, 85))
            ] == [2, 2, 1, 4, 8]
    assert swap_split_k(48, 4096, 85, 132) == 8 and swap_split_k(32, 4096, 85, 132) == 8  # 32: 128-row tiles


@pytest.mark.parametrize("gs", [256, 512])
@pytest.mark.parametrize("m, path", [(1, "packed"), (5, "swap"), (70, "packed")])
def test_largest_group_dots_are_exact(m, path, gs):
    # 16 x codes make a group's dot 256x: at group size 256 it reaches 2^22, the edge of the
    # mantissa trick's range; past it the kernels convert with int -> float (exact below 2^24)
    args = _operands(m, 40, 2 * gs + 32, 32, gs, torch.bfloat16, True)
    args[0] = torch.full_like(args[0], 0x88)  # every code -8: the largest |dot|
    args[4] = torch.full_like(args[4], 0x88)
    got = w4a4_gemm_triton(*args, gs, torch.float32, path=path)
    want = w4a4_gemm_ref(*[t.cpu() if t is not None else None for t in args], gs, torch.float32)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_mantissa_trick_group_sums_same_bits():
    """ATOM_AO_GROUP_CVT=0 (read at import: a fresh process) turns the nibble kernels' group sums
    into float32 by the mantissa trick instead of the conversion: the same floats (both exact),
    on the tile, swap and gemv kernels at the trick's largest group size and past it."""
    code = (
        "import torch, sys; sys.path[:0] = ['tests', 'tests/ops']\n"
        "from test_w4a4_gemm_triton import _operands, w4a4_gemm_triton\n"
        "for m, path in ((1, 'gemv'), (5, 'swap'), (70, 'packed')):\n"
        "    for gs in (128, 256, 512):\n"
        "        args = _operands(m, 40, 2 * gs + 32, 32, gs, torch.bfloat16, True)\n"
        "        args[0] = torch.full_like(args[0], 0x88); args[4] = torch.full_like(args[4], 0x88)\n"
        "        torch.save(w4a4_gemm_triton(*args, gs, torch.float32, path=path), f'{sys.argv[1]}/{m}_{gs}.pt')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for cvt in ("0", "1"):
            d = os.path.join(tmp, cvt)
            os.makedirs(d)
            env = {**os.environ, "ATOM_AO_GROUP_CVT": cvt, "PYTHONPATH": root}
            run = subprocess.run([sys.executable, "-c", code, d], env=env, cwd=root, capture_output=True, text=True,
                                 timeout=600)
            assert run.returncode == 0, run.stderr[-2000:]
            outs[cvt] = {f: torch.load(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        assert len(outs["0"]) == 9 and outs["0"].keys() == outs["1"].keys()
        for f in outs["0"]:
            assert torch.equal(outs["0"][f], outs["1"][f]), f


def test_group_size_past_the_nibble_kernels_takes_the_int8_path():
    args = _operands(3, 32, 1024 + 32, 32, 1024, torch.bfloat16, False)
    with pytest.raises(ValueError, match="group_size <= 1008"):
        w4a4_gemm_triton(*args, 1024, torch.bfloat16, path="swap")
    got = w4a4_gemm_triton(*args, 1024, torch.float32)  # default: the INT8-copies path
    want = w4a4_gemm_ref(*[t.cpu() if t is not None else None for t in args], 1024, torch.float32)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


_TRACE_SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {ops!r}]
from test_w4a4_gemm_triton import _operands
from atom_ao.ops.w4a4_gemm import w4a4_gemm_triton
from torch.fx.experimental.proxy_tensor import make_fx
args = _operands(8, 48, 5 * 64, 32, 64, torch.bfloat16, True, device="cpu")
for path in ("packed", "swap"):
    gm = make_fx(lambda *a: w4a4_gemm_triton(*a, 64, torch.bfloat16, splits=3, path=path), tracing_mode="fake")(*args)
    nodes = list(gm.graph.nodes)
    launches = sum("triton_kernel_wrapper" in str(n.target) for n in nodes)
    adds = sum(n.target == torch.ops.aten.add.Tensor for n in nodes)
    val = gm.graph.output_node().args[0].meta["val"]
    print(path, launches, adds, tuple(val.shape), val.dtype)
"""


def test_traced_split_k_sums_in_the_graph():
    """Traced as torch.compile traces the op's body, a split GEMM is one Triton launch and its
    partials' sum two tensor adds (3 splits) Inductor can fuse into the consumer, no summing
    kernel. (Traced without the interpreter, which would run the kernel on the fake tensors.)"""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent.parent), env.get("PYTHONPATH", "")])
    script = _TRACE_SCRIPT.format(tests=str(here.parent), ops=str(here))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("packed", "swap"))]
    assert lines == [f"{p} 1 2 (8, 48) torch.bfloat16" for p in ("packed", "swap")], res.stdout


def test_in_graph_split_sum_equals_the_summing_kernel():
    from atom_ao.ops.w4a4_gemm import _sum_splits, sum_partials

    ws = torch.randn(5, 7, 33, generator=torch.Generator().manual_seed(0)) * 100
    out = torch.empty(7, 33)
    _sum_splits(ws, out)
    assert torch.equal(sum_partials(ws, torch.float32), out)  # same order of the float32 adds
    # (the interpreter's own float32 -> bf16 cast truncates; torch's rounds to nearest, as the GPU's)
    assert torch.equal(sum_partials(ws, torch.bfloat16), out.to(torch.bfloat16))


@pytest.mark.parametrize("n, k, n_out, gs, splits", [
    (40, 200, 32, 64, 1),        # N off the row tile, K padded to the groups
    (48, 5 * 64 + 32, 32, 64, 2),  # 5 groups: a partial chunk in a split (3 + 2)
    (64, 7 * 64 + 16, 16, 64, 3),  # 7 groups in 3 splits (3 + 3 + 1), 16 outliers
    (32, 320, 0, 128, 1),        # no outliers
])
@pytest.mark.parametrize("dtype, bias", [(torch.bfloat16, True), (torch.float16, False), (torch.float32, True)])
def test_gemv_path_matches_reference(n, k, n_out, gs, splits, dtype, bias):
    # one token: dp4a over int32 words of both operands, float32 sums over group slots; the same
    # INT32 group dots as the tile kernels, so the reference to float rounding
    _check(1, n, k, n_out, gs, dtype, bias, splits=splits, path="gemv")


@pytest.mark.parametrize("config", [(8, 2, 1), (16, 4, 2), (8, 8, 2)])
def test_gemv_tiles_match_reference(monkeypatch, config):
    # other row tiles / group steps than the interpreter's default
    import importlib
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    monkeypatch.setattr(gemv, "GEMV_CONFIG", config)
    for splits in (1, 2):
        test_gemv_path_matches_reference(48, 9 * 64 + 32, 32, 64, splits, torch.bfloat16, True)


@pytest.mark.parametrize("gs, copies", [(64, 2), (128, 4)])
def test_gemv_scale_copies_match_reference(monkeypatch, gs, copies):
    # each weight scale loaded once per thread of its group row (GEMV_SCALE_COPIES), then reduced
    import importlib
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    monkeypatch.setattr(gemv, "GEMV_SCALE_COPIES", True)
    assert gemv.scale_copies(gs) == copies and gemv.scale_copies(48) == 1  # 6 words: not a power of two
    for splits in (1, 2):
        test_gemv_path_matches_reference(48, 9 * gs + 32, 32, gs, splits, torch.bfloat16, True)


def test_gemv_path_takes_one_token():
    args = _operands(2, 32, 256, 32, 128, torch.bfloat16, False)
    with pytest.raises(ValueError, match="gemv"):
        w4a4_gemm_triton(*args, 128, torch.bfloat16, path="gemv")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("splits", [None, 1, 4])
@pytest.mark.parametrize("n, k", [(4096, 4096), (12288, 4096), (4096, 11008), (22016, 4096), (1000, 4096 + 128)])
@pytest.mark.parametrize("scale_copies", [False, True])
def test_gemv_path_real_shapes_gpu(monkeypatch, n, k, splits, scale_copies):
    import importlib
    monkeypatch.setattr(importlib.import_module("atom_ao.ops.w4a4_gemv"), "GEMV_SCALE_COPIES", scale_copies)
    args = _operands(1, n, k, 128, 128, torch.bfloat16, True, device="cuda")
    gemv = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="gemv", splits=splits)
    swap = w4a4_gemm_triton(*args, 128, torch.bfloat16, path="swap")
    torch.testing.assert_close(gemv.float(), swap.float(), rtol=1e-2, atol=1e-2 * swap.float().abs().max().item())
    _check(1, n, k, 128, 128, torch.bfloat16, True, device="cuda", splits=splits)


def test_gemv_split_rule_picks_the_timed_splits(monkeypatch):
    # H200 (132 SMs), 32-row tiles: the splits timed best at M = 1 (session35_explore_gemv_splits_s35):
    # Llama-2-7B qkv 2, gate/up 1, o and down 4; Llama-3-8B qkv 4, gate/up 1 (2 or 4 were faster,
    # not taken), down 4; a share keeps >= 4 groups
    from atom_ao.ops import w4a4_gemv
    from atom_ao.ops.w4a4_gemv import gemv_split_k
    shapes = ((12288, 31), (22016, 31), (4096, 31), (4096, 85), (6144, 31), (28672, 31), (4096, 111))
    monkeypatch.setattr(w4a4_gemv, "GEMV_MORE_SPLITS", True)
    assert [gemv_split_k(n, g, 132, block_n=32) for n, g in shapes] == [2, 1, 4, 4, 4, 1, 4]
    assert gemv_split_k(64, 7, 132, block_n=32) == 1  # 7 groups: too few to share
    monkeypatch.setattr(w4a4_gemv, "GEMV_MORE_SPLITS", False)  # the rule before session 35
    assert [gemv_split_k(n, g, 132, block_n=32) for n, g in shapes] == [1, 1, 4, 4, 2, 1, 4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs an sm90+ GPU (programmatic dependent launch)")
@pytest.mark.parametrize("splits, l2_ahead, release", [(1, 0, "early"), (1, 0, "late"), (4, 0, "early"),
                                                      (4, 0, "late"), (1, 2, "late"), (4, 3, "early")])
def test_gemv_with_pdl_same_bits_gpu(monkeypatch, splits, l2_ahead, release):
    # quantizer and gemv launched with PDL, chained three times through each other's outputs
    # (benchmarks/explore_pdl.py): the waits must make every read see its producer's writes
    import importlib

    from atom_ao.ops.producers import PLAIN
    qa = importlib.import_module("atom_ao.ops.quantize_activation")
    gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
    monkeypatch.setattr(gemv, "GEMV_L2_AHEAD", l2_ahead)  # weights prefetched into L2 before the wait
    monkeypatch.setattr(gemv, "GEMV_PDL_RELEASE", release)  # when the gemv lets the next kernel launch
    n = k = 4096
    *_, wq, ws, wo, wos, _ = _operands(1, n, k, 128, 128, torch.bfloat16, False, device="cuda")
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1)).to(torch.int32).cuda()
    x0, _ = outlier_activations(1, k, dtype=torch.bfloat16, seed=3)

    def chain(pdl):
        x = x0.cuda()
        for _ in range(3):
            a = qa.launch_streaming(PLAIN, x, None, None, None, perm, 128, 128, 0.9, False, x.dtype, pdl=pdl)
            ws_out = torch.empty((splits, 1, n), dtype=torch.float32, device="cuda")
            gemv.launch_gemv(*a, wq, ws.contiguous(), wo, wos, None, ws_out, 128, splits, pdl=pdl)
            x = (ws_out.sum(0) / 64).to(torch.bfloat16)
        return x

    plain = chain(False)
    assert plain.abs().max() > 0
    assert torch.equal(chain(True), plain)
