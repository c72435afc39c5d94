"""explore_gemv_stream's load-only kernels against their oracle, under the Triton interpreter."""

import pytest
import torch

from cpu_smoke import run_on_cpu  # noqa: F401  (puts benchmarks/ on the path; sets the interpreter)
import explore_gemv_stream as es  # noqa: E402


@pytest.mark.parametrize("splits", [1, 2])
def test_rows_and_tiles_read_every_word(splits):
    g = torch.Generator().manual_seed(0)
    words = torch.randint(-2**31, 2**31 - 1, (16, 32), dtype=torch.int32, generator=g)
    ref = es.reference_xor(words, splits)
    assert ref.shape == (splits, 16)
    assert torch.equal(es.stream_rows(words, 8, 8, 1, splits), ref)
    tiles = es.to_tiles(words, 8, 8, splits)
    assert torch.equal(es.stream_tiles(tiles, 16, 8, 8, 1, splits), ref)


def test_reference_xor_is_xor():
    words = torch.tensor([[1, 2, 4, 8]], dtype=torch.int32)
    assert es.reference_xor(words, 1).tolist() == [[15]]
    assert es.reference_xor(words, 2).tolist() == [[3], [12]]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divide"):
        es.check_stream_args(torch.zeros(12, 32, dtype=torch.int32), 8, 8, 1)
    with pytest.raises(ValueError, match="int32"):
        es.check_stream_args(torch.zeros(16, 32, dtype=torch.int64), 8, 8, 1)


def test_tma_reads_every_word():
    import triton

    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))
    g = torch.Generator().manual_seed(1)
    words = torch.randint(-2**31, 2**31 - 1, (16, 32), dtype=torch.int32, generator=g)
    assert torch.equal(es.stream_tma(words, 8, 8, 1, 2, 2), es.reference_xor(words, 2))


@pytest.mark.parametrize("splits", [1, 3])
def test_gemv_tma_matches_the_gemv(splits):
    """The TMA prototype against the library gemv with the outlier block zeroed (groups only)."""
    import triton

    from atom_ao.format import quantize_activation_ref
    from atom_ao.ops.w4a4_gemm import w4a4_gemm_triton
    from atom_ao.weight import quantize_weight

    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))
    g = torch.Generator().manual_seed(2)
    k, n, n_out, gs = 768, 24, 128, 128  # 5 groups: a chunk half past the share (masked); rows past N clipped
    x = torch.randn(1, k, generator=g)
    x[:, :4] *= 80
    perm = torch.randperm(k, generator=g).to(torch.int32)
    wq = quantize_weight(torch.randn(n, k, generator=g) * 0.05, perm, n_out, gs, clip_ratio=0.9)
    a = quantize_activation_ref(x, perm, n_out, gs, 0.9)
    zero_out = torch.zeros_like(wq["outlier_qdata"])
    want = w4a4_gemm_triton(*a, wq["qdata"], wq["scale"], zero_out, wq["outlier_scale"], None, gs,
                            torch.float32, path="gemv", splits=1).float()[0]
    got = es.gemv_tma(a[0], a[1], wq["qdata"], wq["scale"], gs, splits, block_n=16, chunk=2, warps=1, stages=2)
    torch.testing.assert_close(got.sum(0), want, rtol=1e-5, atol=1e-4)
