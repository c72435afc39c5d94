"""explore_ws's kernel on CPU (Triton's interpreter, tiny sizes): the swap-AB TMA kernel it times
computes the group-scaled INT4 sums of the format (a float64 oracle), with and without split-K,
so its GPU timings compare kernels that do the same work."""

import pytest
import torch
import triton

from cpu_smoke import run_on_cpu  # noqa: F401  (puts benchmarks/ on the path)
import explore_ws  # noqa: E402
from atom_ao.format import pack_int4  # noqa: E402


@pytest.mark.parametrize("m, splits", [(16, 1), (16, 2), (20, 3)])
def test_kernel_matches_the_group_sums(m, splits):
    torch.manual_seed(m + splits)
    n, g = 256, 5
    a8 = torch.randint(-8, 8, (m, g * 128), dtype=torch.int8)
    w8 = torch.randint(-8, 8, (n, g * 128), dtype=torch.int8)
    sa, sw = torch.rand(m, g) + 0.5, torch.rand(n, g) + 0.5
    device = "cuda" if torch.cuda.is_available() else "cpu"
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=device))
    got = explore_ws.explore_gemm(pack_int4(w8, 128).to(device), a8.to(device), sw.to(device), sa.to(device),
                                  128, False, splits).cpu()
    want = torch.einsum("mgk,ngk->mng", a8.view(m, g, 128).double(), w8.view(n, g, 128).double())
    want = (want * sa.double()[:, None, :] * sw.double()[None, :, :]).sum(-1)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_splits_fill_the_gpu_and_leave_no_share_empty():
    assert explore_ws.pick_splits(4096, 31, 128, 132) == 8  # 32 row tiles
    assert explore_ws.pick_splits(22016, 31, 128, 132) == 1  # 172 row tiles: a wave already
    for n in (4096, 12288):
        for groups in (5, 31, 32):
            s = explore_ws.pick_splits(n, groups, 128, 132)
            assert (s - 1) * triton.cdiv(groups, s) < groups
