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
