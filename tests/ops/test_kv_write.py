"""The INT4 KV format (``atom_ao.kv.format``) and the KV-write kernel against its reference, bit for bit.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (``tests/conftest.py`` sets
``TRITON_INTERPRET=1`` before atom_ao is imported); with one, on CUDA tensors.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.kv.format import (  # noqa: E402
    dequantize_kv, hadamard, hadamard_rows, kv_write_ref, new_paged_cache, pack_kv, quantize_kv, unpack_kv,
)
from atom_ao.ops.kv_write import kv_write_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


def _write_both(k, v, slots, pages, page_size, meta_dtype, device=DEVICE):
    h, d = k.shape[1], k.shape[2]
    want = new_paged_cache(pages, h, page_size, d, meta_dtype)
    kv_write_ref(k.cpu(), v.cpu(), slots.cpu(), *want)
    got = new_paged_cache(pages, h, page_size, d, meta_dtype, device=device)
    kv_write_triton(k.to(device), v.to(device), slots.to(device), *got)
    return want, [t.cpu() for t in got]


def test_pack_layout_pairs_j_with_j_plus_half():
    q = torch.tensor([[1, 2, 3, 4, 9, 10, 11, 12]])
    packed = pack_kv(q)
    assert packed.tolist() == [[1 | 9 << 4, 2 | 10 << 4, 3 | 11 << 4, 4 | 12 << 4]]
    assert torch.equal(unpack_kv(packed), q.to(torch.uint8))


@pytest.mark.parametrize("meta_dtype", [torch.float16, torch.bfloat16])
def test_quantize_error_is_half_a_step(meta_dtype):
    x = torch.randn(64, 4, 128) * torch.rand(64, 4, 1) * 10
    packed, scale, zero = quantize_kv(x, meta_dtype)
    err = (dequantize_kv(packed, scale, zero) - x).abs()
    # half a step, plus the rounding of scale and zero to 8 (bf16) / 11 (fp16) bits
    eps = 2.0 ** -8 if meta_dtype == torch.bfloat16 else 2.0 ** -11
    bound = scale.float() * (0.5 + 15 * eps) + zero.float().abs() * eps + 1e-6
    assert (err <= bound[..., None]).all()


def test_constant_and_nan_rows():
    x = torch.full((2, 1, 64), 3.0)
    x[1, 0, 5] = float("nan")
    packed, scale, zero = quantize_kv(x, torch.float16)
    y = dequantize_kv(packed, scale, zero)
    assert torch.equal(y[0], x[0])  # scale 0: exact
    assert y[1].isnan().all()  # NaN in, NaN out (through the scale)


def test_hadamard_is_orthonormal_and_symmetric():
    h = hadamard(64)
    torch.testing.assert_close(h @ h, torch.eye(64), atol=1e-6, rtol=0)
    assert torch.equal(h, h.t())


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype, meta_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                               (torch.float32, torch.float16), (torch.float32, torch.bfloat16)])
def test_kernel_matches_reference_bitwise(d, dtype, meta_dtype):
    g = torch.Generator().manual_seed(d)
    n, h, page_size, pages = 37, 3, 16, 8
    # rows laid out (tokens, heads, D) with a transposed stride, as transformers hands them over
    k = (torch.randn(h, n, d, generator=g) * 4 + 1).to(dtype).transpose(0, 1)
    v = torch.randn(n, h, d, generator=g).to(dtype)
    k[5, 1] = 2.5  # a constant row
    slots = torch.randperm(pages * page_size, generator=g)[:n]
    slots[[3, 20]] = -1  # skipped (padding)
    want, got = _write_both(k, v, slots, pages, page_size, meta_dtype)
    for w, o in zip(want, got):
        assert torch.equal(_bits(w), _bits(o))


def _dequantized(cache, meta):
    return dequantize_kv(cache, meta[:, :, 0], meta[:, :, 1])  # (pages, H, page_size, D)


def _check_rotated(k, v, slots, pages, page_size, meta_dtype, rotate_k, rotate_v, device=DEVICE):
    """The kernel's in-register rotation against the reference on float32 ``x @ H``: the same
    codes but where a value sits on a rounding boundary (another summation order), there one step."""
    h, d = k.shape[1], k.shape[2]
    want = new_paged_cache(pages, h, page_size, d, meta_dtype)
    kv_write_ref(hadamard_rows(k.cpu()) if rotate_k else k.cpu(), hadamard_rows(v.cpu()) if rotate_v else v.cpu(),
                 slots.cpu(), *want)
    got = new_paged_cache(pages, h, page_size, d, meta_dtype, device=device)
    kv_write_triton(k.to(device), v.to(device), slots.to(device), *got, rotate_k=rotate_k, rotate_v=rotate_v)
    got = [t.cpu() for t in got]
    # a row's min / max can round to the neighbouring meta value (one unit in the last place: up to
    # 2^-7 of it in bf16, 2^-10 in fp16; ~1 row in 10^4 at 4096 x 32 rows, session 24's GPU run), and
    # then a code to the next step: half a percent of rows may differ, each by one step plus those ulps
    # A rotated value itself may differ by float32 rounding of its 128-term sum: ~2^-17 of the row's
    # magnitude (mag = 15 scale + |zero|), which matters for a min (zero) close to 0.
    ulp = 2.0 ** -7 if meta_dtype == torch.bfloat16 else 2.0 ** -10
    for (wc, wm), (gc, gm) in (((want[0], want[2]), (got[0], got[2])), ((want[1], want[3]), (got[1], got[3]))):
        scale, zero = wm[:, :, 0].float().abs(), wm[:, :, 1].float().abs()
        mag = 15 * scale + zero
        for i in (0, 1):  # scale, zero
            assert ((gm[:, :, i].float() - wm[:, :, i].float()).abs()
                    <= wm[:, :, i].float().abs() * ulp + mag * 2.0 ** -14 + 1e-7).all(), "meta"
        same = (unpack_kv(wc) == unpack_kv(gc)).float().mean().item()
        assert same > 0.995, same
        step = (scale * (1 + 16 * ulp) + zero * ulp + mag * 2.0 ** -12)[..., None] + 1e-6
        assert ((_dequantized(gc, gm) - _dequantized(wc, wm)).abs() <= step).all()
    return want, got


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_rotation_matches_reference(d, dtype):
    g = torch.Generator().manual_seed(d + 1)
    n, h, page_size, pages = 21, 2, 16, 4
    k = (torch.randn(h, n, d, generator=g) * 2).to(dtype).transpose(0, 1)
    k[:, :, 3] *= 60  # an outlier channel: what the rotation spreads
    v = torch.randn(n, h, d, generator=g).to(dtype)
    slots = torch.randperm(pages * page_size, generator=g)[:n]
    slots[7] = -1
    _check_rotated(k, v, slots, pages, page_size, torch.float16 if dtype == torch.float16 else torch.bfloat16,
                   True, True)
    # K only (V rotated, K not: a cache with keys before RoPE) and the other way round
    _check_rotated(k, v, slots, pages, page_size, torch.bfloat16, False, True)
    _check_rotated(k, v, slots, pages, page_size, torch.bfloat16, True, False)


def test_rotation_spreads_an_outlier_channel():
    """What the rotation is for: one channel 100x the rest sets a plain row's scale; rotated, the
    row's quantization error (measured after rotating back) is several times smaller."""
    k = torch.randn(64, 2, 128)
    k[:, :, 5] *= 100
    h = hadamard(128)
    plain = dequantize_kv(*quantize_kv(k, torch.float32))
    rotated = dequantize_kv(*quantize_kv(hadamard_rows(k), torch.float32)) @ h
    assert (rotated - k).norm() * 3 < (plain - k).norm()


def test_op_rotation_on_cpu_is_the_reference():
    k, v = torch.randn(5, 2, 64, dtype=torch.bfloat16), torch.randn(5, 2, 64, dtype=torch.bfloat16)
    a = new_paged_cache(2, 2, 8, 64, torch.bfloat16)
    b = new_paged_cache(2, 2, 8, 64, torch.bfloat16)
    kv_write_ref(hadamard_rows(k), v, torch.arange(5), *a)
    torch.ops.atom_ao.kv_write(k, v, torch.arange(5), *b, rotate_k=True)
    assert all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


def test_kernel_nan_row():
    k = torch.randn(4, 2, 64)
    k[1, 0, 7] = float("nan")
    want, got = _write_both(k, k.clone(), torch.arange(4), 1, 16, torch.float16)
    for w, o in zip(want, got):
        assert torch.equal(_bits(w), _bits(o))
    assert got[2][0, 0, 0, 1].isnan()  # the NaN row's scale


def test_op_on_cpu_is_the_reference():
    k, v = torch.randn(5, 2, 64), torch.randn(5, 2, 64)
    a = new_paged_cache(2, 2, 8, 64)
    b = new_paged_cache(2, 2, 8, 64)
    kv_write_ref(k, v, torch.arange(5) + 3, *a)
    torch.ops.atom_ao.kv_write(k, v, torch.arange(5) + 3, *b)
    assert all(torch.equal(_bits(x), _bits(y)) for x, y in zip(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("n, h, d", [(1, 8, 128), (64, 8, 128), (8192, 8, 128), (4096, 32, 128), (2048, 3, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_real_sizes_gpu(n, h, d, dtype):
    g = torch.Generator().manual_seed(n)
    k = (torch.randn(n, h, d, generator=g) * 3).to(dtype)
    v = torch.randn(n, h, d, generator=g).to(dtype)
    page_size = 64
    pages = -(-n // page_size) + 1
    slots = torch.randperm(pages * page_size, generator=g)[:n]
    meta = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    want, got = _write_both(k, v, slots, pages, page_size, meta, device="cuda")
    for w, o in zip(want, got):
        assert torch.equal(_bits(w), _bits(o))


@pytest.mark.gpu
@pytest.mark.parametrize("n, h, d", [(1, 32, 128), (64, 8, 128), (4096, 32, 128), (2048, 3, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_rotation_real_sizes_gpu(n, h, d, dtype):
    g = torch.Generator().manual_seed(n + 7)
    k = (torch.randn(n, h, d, generator=g) * 3).to(dtype)
    k[:, :, :2] *= 50
    v = torch.randn(n, h, d, generator=g).to(dtype)
    page_size = 64
    pages = -(-n // page_size) + 1
    slots = torch.randperm(pages * page_size, generator=g)[:n]
    meta = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    _check_rotated(k, v, slots, pages, page_size, meta, True, True, device="cuda")
