"""torch.library.opcheck of the INT4 KV ops (schema, fake tensors, AOT dispatch) on CPU,
with and without the before-RoPE arguments."""

import pytest
import torch
from torch.library import opcheck

from atom_ao.kv.format import new_paged_cache
from atom_ao.kv.rope import rope_table
from test_kv_attention import paged_cache

ops = torch.ops.atom_ao


def _rope(kv_heads, d, positions):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    return rope_table(inv_freq, positions), torch.randn(kv_heads, d)


@pytest.mark.parametrize("rotate", [False, True])
def test_opcheck_kv_write(rotate):
    caches = new_paged_cache(4, 2, 8, 64, torch.bfloat16)
    k, v = torch.randn(5, 2, 64), torch.randn(5, 2, 64)
    opcheck(ops.kv_write.default, (k, v, torch.tensor([0, 1, 9, 17, 30]), *caches),
            {"rotate_k": rotate, "rotate_v": rotate})


@pytest.mark.parametrize("with_rope, v_rotated", [(False, False), (True, False), (False, True)])
def test_opcheck_kv_decode_attention(with_rope, v_rotated):
    caches, table = paged_cache([9, 20], 2, 64, page_size=8)
    extra = _rope(2, 64, table.shape[1] * 8) if with_rope else (None, None)
    args = (torch.randn(2, 4, 64), *caches, table, torch.tensor([9, 20], dtype=torch.int32),
            torch.tensor([0, 3], dtype=torch.int32), 0.125, 0, *extra)
    opcheck(ops.kv_decode_attention.default, args, {"v_rotated": v_rotated})


@pytest.mark.parametrize("with_rope", [False, True])
def test_opcheck_kv_prefill_attention(with_rope):
    caches, table = paged_cache([9, 20], 2, 64, page_size=8)
    extra = _rope(2, 64, table.shape[1] * 8) if with_rope else (None, None)
    args = (torch.randn(2, 4, 5, 64), *caches, table, torch.tensor([9, 20], dtype=torch.int32), None, 0.125, *extra)
    opcheck(ops.kv_prefill_attention.default, args)


def test_opcheck_prefill_attention():
    q, k, v = torch.randn(2, 4, 7, 64), torch.randn(2, 2, 7, 64), torch.randn(2, 2, 7, 64)
    opcheck(ops.prefill_attention.default, (q, k, v, torch.tensor([0, 2], dtype=torch.int32), 0.125))


@pytest.mark.gpu
@pytest.mark.parametrize("with_rope", [False, True])
def test_opcheck_kv_attention_gpu(with_rope):
    caches, table = paged_cache([90, 200], 2, 64, page_size=64, device="cuda")
    extra = tuple(t.cuda() for t in _rope(2, 64, table.shape[1] * 64)) if with_rope else (None, None)
    lens = torch.tensor([90, 200], dtype=torch.int32, device="cuda")
    q = torch.randn(2, 4, 64, device="cuda", dtype=torch.bfloat16)
    opcheck(ops.kv_decode_attention.default, (q, *caches, table, lens, None, 0.125, 0, *extra))
    opcheck(ops.kv_decode_attention.default, (q, *caches, table, lens, None, 0.125, 0, *extra), {"v_rotated": True})
    k, v = torch.randn(2, 2, 64, device="cuda", dtype=torch.bfloat16), torch.randn(2, 2, 64, device="cuda",
                                                                                   dtype=torch.bfloat16)
    opcheck(ops.kv_write.default, (k, v, torch.tensor([3, 70], device="cuda"), *caches),
            {"rotate_k": True, "rotate_v": True})
    qp = torch.randn(2, 4, 5, 64, device="cuda", dtype=torch.bfloat16)
    opcheck(ops.kv_prefill_attention.default, (qp, *caches, table, lens, None, 0.125, *extra))
