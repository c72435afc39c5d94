"""``kv_tiles.unpack_codes``: every byte value -> its two codes, exactly, for each way of unpacking.

The mantissa tricks run under the interpreter for float32 and fp16 (bf16's bit patterns are not
interpreted faithfully there; the GPU tests cover bf16 through the attention kernels)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from atom_ao.ops.kv_tiles import F32_MAGIC, unpack_codes  # noqa: E402


@triton.jit
def _unpack_kernel(b_ptr, lo_ptr, hi_ptr, DOT: tl.constexpr, MAGIC: tl.constexpr):
    r = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
    lo, hi = unpack_codes(tl.load(b_ptr + r), DOT, MAGIC)
    tl.store(lo_ptr + r, lo)
    tl.store(hi_ptr + r, hi)


CASES = [(torch.float32, tl.float32, F32_MAGIC.value), (torch.float16, tl.float16, 0x6400),
         (torch.float32, tl.float32, 0)]
if torch.cuda.is_available():
    CASES.append((torch.bfloat16, tl.bfloat16, 0x4300))


@pytest.mark.parametrize("dtype, tl_dtype, magic", CASES)
def test_unpack_codes_every_byte(dtype, tl_dtype, magic):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = torch.arange(256, dtype=torch.uint8, device=device)
    lo = torch.empty(256, dtype=dtype, device=device)
    hi = torch.empty_like(lo)
    _unpack_kernel[(1,)](b, lo, hi, DOT=tl_dtype, MAGIC=magic)
    assert torch.equal(lo.float(), (b & 15).float())
    assert torch.equal(hi.float(), (b >> 4).float())
