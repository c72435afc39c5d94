"""Keys cached before RoPE (``atom_ao.kv.rope``): the attention kernels rotate the dequantized
keys by their slot (and add the K bias back) and must match the reference; the reference
itself is checked against dequantize -> add bias -> rotate done by hand."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.kv.format import gather_kv  # noqa: E402
from atom_ao.kv.reference import attention_ref, cached_attention_ref, decode_attention_ref  # noqa: E402
from atom_ao.kv.rope import check_rope_args, rope_table, rotate_keys, unrotate_keys  # noqa: E402
from atom_ao.ops import kv_decode_attention as dec  # noqa: E402
from atom_ao.ops.kv_decode_attention import kv_decode_attention_triton  # noqa: E402
from atom_ao.ops.kv_prefill_attention import kv_prefill_attention_triton  # noqa: E402
from test_kv_attention import _close, paged_cache  # noqa: E402


def _rope_args(kv_heads, d, positions, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    bias = torch.randn(kv_heads, d, generator=g) * 3
    bias[0, 0] = 54.0  # a Qwen-like large entry on a fast-turning pair (~27x the keys)
    bias[-1, 5] = 150.0  # and a 75x outlier channel (Qwen2.5 reaches ~210)
    return rope_table(inv_freq, positions, device), bias.to(device)


def test_rotate_unrotate_round_trip_and_transformers_convention():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    d, n = 64, 50
    table, _ = _rope_args(1, d, n)
    k = torch.randn(1, 2, n, d)
    slots = torch.arange(n)
    torch.testing.assert_close(unrotate_keys(rotate_keys(k, table, slots), table, slots), k, atol=1e-5, rtol=1e-5)
    cos = torch.cat([table[0], table[0]], -1)[None]  # transformers' (B, T, D) cos / sin
    sin = torch.cat([table[1], table[1]], -1)[None]
    _, want = apply_rotary_pos_emb(k, k, cos, sin)
    torch.testing.assert_close(rotate_keys(k, table, slots), want, atol=1e-5, rtol=1e-5)


def test_reference_rotates_dequantized_keys_plus_bias():
    lens = [30, 11]
    caches, table = paged_cache(lens, 2, 64, page_size=8)
    rope, bias = _rope_args(2, 64, table.shape[1] * 8)
    q = torch.randn(2, 4, 64)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    k = rotate_keys(gather_kv(caches[0], caches[2], table) + bias[None, :, None], rope, torch.arange(table.shape[1] * 8))
    v = gather_kv(caches[1], caches[3], table)
    want = attention_ref(q[:, :, None], k, v, seq_lens.long()[:, None] - 1, seq_lens.long(), None, 0.125)[:, :, 0]
    got = decode_attention_ref(q, *caches, table, seq_lens, None, 0.125, rope, bias)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("heads, kv_heads, d, dtype", [
    (6, 2, 64, torch.bfloat16), (4, 4, 64, torch.float32), (8, 1, 128, torch.bfloat16), (4, 2, 128, torch.float32),
])  # tensor-core groups (GQA 3, MQA 8) and CUDA-core groups (MHA, groups of 2)
@pytest.mark.parametrize("with_bias, prefetch", [(True, False), (False, False), (True, True)])
def test_decode_rope_matches_reference(monkeypatch, heads, kv_heads, d, dtype, with_bias, prefetch):
    monkeypatch.setattr(dec, "INTERPRET_PREFETCH", prefetch)  # the variant that loads a tile ahead
    lens = [1, 37, 70]
    caches, table = paged_cache(lens, kv_heads, d, page_size=24)
    rope, bias = _rope_args(kv_heads, d, table.shape[1] * 24 + 5)
    bias = bias if with_bias else None
    q = torch.randn(len(lens), heads, d, generator=torch.Generator().manual_seed(1)).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    for hint, kv_start in ((0, None), (4096, torch.tensor([0, 5, 20], dtype=torch.int32))):
        want = decode_attention_ref(q, *caches, table, seq_lens, kv_start, d ** -0.5, rope, bias)
        got = kv_decode_attention_triton(q, *caches, table, seq_lens, kv_start, d ** -0.5, hint, rope, bias)
        _close(got, want, dtype)


@pytest.mark.parametrize("dtype, padded", [(torch.bfloat16, True), (torch.float32, False)])
def test_cached_prefill_rope_matches_reference(dtype, padded):
    lens = [40, 75]
    caches, table = paged_cache(lens, 2, 64, page_size=16)
    rope, bias = _rope_args(2, 64, table.shape[1] * 16)
    q = torch.randn(2, 4, 21, 64, generator=torch.Generator().manual_seed(3)).to(dtype)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    kv_start = torch.tensor([3, 30], dtype=torch.int32) if padded else None
    want = cached_attention_ref(q, *caches, table, seq_lens, kv_start, 0.125, rope, bias)
    _close(kv_prefill_attention_triton(q, *caches, table, seq_lens, kv_start, 0.125, rope, bias), want, dtype)


def test_bad_rope_args_are_refused():
    rope, bias = _rope_args(2, 64, 32)
    with pytest.raises(ValueError, match="k_rope must be float32"):
        check_rope_args(rope.double(), None, 2, 64, 32, rope.device, "op")
    with pytest.raises(ValueError, match="covers 32 positions"):
        check_rope_args(rope, None, 2, 64, 48, rope.device, "op")
    with pytest.raises(ValueError, match="pass k_rope too"):
        check_rope_args(None, bias, 2, 64, 32, rope.device, "op")
    with pytest.raises(ValueError, match="k_bias must be float32"):
        check_rope_args(rope, bias[:1], 2, 64, 32, rope.device, "op")
    caches, table = paged_cache([9], 2, 64, page_size=8)
    with pytest.raises(ValueError, match="covers"):  # through the op: the table must cover the pages
        torch.ops.atom_ao.kv_decode_attention(torch.randn(1, 2, 64), *caches, table, torch.tensor([9], dtype=torch.int32),
                                              None, 0.1, 0, rope[:, :8], None)


@pytest.mark.gpu
@pytest.mark.parametrize("batch, ctx, heads, kv_heads, d", [(4, 4096, 32, 32, 128), (8, 2048, 14, 2, 64),
                                                            (2, 9000, 32, 8, 128)])
def test_rope_real_sizes_gpu(batch, ctx, heads, kv_heads, d):
    g = torch.Generator().manual_seed(batch)
    lens = torch.randint(ctx // 2, ctx + 1, (batch,), generator=g)
    lens[0] = ctx
    caches, table = paged_cache(lens.tolist(), kv_heads, d, page_size=64, device="cuda")
    rope, bias = _rope_args(kv_heads, d, table.shape[1] * 64)
    q = torch.randn(batch, heads, d, generator=g).to(torch.bfloat16)
    seq_lens = lens.to(torch.int32)
    cpu = [c.cpu() for c in caches]
    want = decode_attention_ref(q, *cpu, table.cpu(), seq_lens, None, d ** -0.5, rope, bias)
    got = torch.ops.atom_ao.kv_decode_attention(q.cuda(), *caches, table, seq_lens.cuda(), None, d ** -0.5, ctx,
                                                rope.cuda(), bias.cuda())
    _close(got, want, torch.bfloat16)
    qp = torch.randn(batch, heads, 100, d, generator=g).to(torch.bfloat16)
    want = cached_attention_ref(qp, *cpu, table.cpu(), seq_lens, None, d ** -0.5, rope, bias)
    got = torch.ops.atom_ao.kv_prefill_attention(qp.cuda(), *caches, table, seq_lens.cuda(), None, d ** -0.5,
                                                 rope.cuda(), bias.cuda())
    _close(got, want, torch.bfloat16)
