"""``atom_ao::combine_quantize``: the decode attention's split combine fused with o_proj's activation
quantizer, against its reference (``combine_splits_ref`` then ``quantize_activation_ref``) and
against the unfused kernels (the decode reduce kernel, then ``quantize_activation``), under
Triton's interpreter on CPU (on the GPU with one). Codes match up to rare rounding-boundary flips:
the float32 sums over the splits run in another order (fused_compare)."""

import os
import sys

import pytest
import torch
from torch.library import opcheck

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from atom_ao.format import quantize_activation_ref  # noqa: E402
from atom_ao.kv.reference import decode_attention_ref  # noqa: E402
from atom_ao.ops import kv_decode_attention as dec  # noqa: E402
from atom_ao.ops.combine_quantize import (  # noqa: E402
    combine_quantize, combine_quantize_ref, combine_quantize_triton, combine_splits_ref)
from atom_ao.ops.quantize_activation import quantize_activation_triton  # noqa: E402
from fused_compare import assert_quantized_close  # noqa: E402
from test_kv_attention import paged_cache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def partials(b, h, splits, d, seed=0, empty=()):
    """Random split partials shaped like the decode kernels' (scores in base 2): each split's
    max m, its sum l of 2^(s - m) (>= 1) and its P.V, with a few channels 50x larger; the
    (batch, head, split) triples in ``empty`` attended nothing (m = -inf, l = 0, P.V = 0)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(b, h, splits, generator=g) * 3
    l_s = 1 + torch.rand(b, h, splits, generator=g) * 30
    part = torch.randn(b, h, splits, d, generator=g) * l_s[..., None]
    part[..., torch.randperm(d, generator=g)[:3]] *= 50  # outlier channels
    for i, j, s in empty:
        m[i, j, s], l_s[i, j, s], part[i, j, s] = float("-inf"), 0.0, 0.0
    return part, torch.stack([m, l_s], dim=-1)


def _perm(k, seed=1):
    return torch.randperm(k, generator=torch.Generator().manual_seed(seed)).to(torch.int32)


@pytest.mark.parametrize("b, h, splits, d, n_out, gs", [
    (1, 4, 20, 64, 64, 128), (3, 2, 1, 128, 128, 128), (2, 6, 37, 64, 32, 64), (1, 3, 70, 32, 0, 32),
    (2, 4, 5, 64, 16, 96),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_matches_reference(b, h, splits, d, n_out, gs, dtype):
    part, ml = partials(b, h, splits, d, seed=b + splits, empty=[(0, 0, 0), (b - 1, h - 1, splits - 1)])
    perm = _perm(h * d)
    want = combine_quantize_ref(part, ml, perm, n_out, gs, 0.9, dtype)
    got = combine_quantize_triton(part.to(DEVICE), ml.to(DEVICE), perm.to(DEVICE), n_out, gs, 0.9, dtype)
    assert_quantized_close(got, want, gs, producer_ulp=0.0 if dtype == torch.float32 else torch.finfo(dtype).eps)


@pytest.mark.parametrize("channels_on_lanes", [False, True])
@pytest.mark.parametrize("splits", [20, 37])  # one pass; two passes (more than SPLIT_CHUNK)
def test_both_tile_layouts(monkeypatch, channels_on_lanes, splits):
    """The (channels, splits) and (splits, channels) tiles (which one a Triton lays out with the
    channels on its lanes differs by version) give the reference's codes."""
    monkeypatch.setattr(sys.modules["atom_ao.ops.combine_quantize"], "CHANNELS_ON_LANES", channels_on_lanes)
    part, ml = partials(1, 4, splits, 64, seed=splits, empty=[(0, 1, 3)])
    perm = _perm(256, seed=splits)
    want = combine_quantize_ref(part, ml, perm, 64, 64, 0.9, torch.bfloat16)
    got = combine_quantize_triton(part.to(DEVICE), ml.to(DEVICE), perm.to(DEVICE), 64, 64, 0.9, torch.bfloat16)
    assert_quantized_close(got, want, 64, producer_ulp=torch.finfo(torch.bfloat16).eps)


def test_all_splits_empty_gives_zero_codes():
    part, ml = partials(1, 2, 3, 64, empty=[(0, h, s) for h in range(2) for s in range(3)])
    got = combine_quantize_triton(part.to(DEVICE), ml.to(DEVICE), _perm(128).to(DEVICE), 32, 32, 0.9, torch.bfloat16)
    assert combine_splits_ref(part, ml, torch.bfloat16).eq(0).all()
    assert all(t.cpu().eq(0).all() for t in got)  # zero codes and zero scales


@pytest.mark.parametrize("dtype", [
    torch.float32,
    # the interpreter casts to bf16 by truncation (the reduce kernel's store), the GPU rounds
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(DEVICE != "cuda", reason="bf16 stores round on the GPU only")),
])
def test_matches_the_unfused_kernels(dtype):
    """On the real split kernel's partials: the fused combine + quantize against its reduce kernel's
    output quantized by ``quantize_activation``, and that output against the combine's reference."""
    lens, heads, kv_heads, d = [300, 77], 4, 2, 64
    (kc, vc, km, vm), table = paged_cache(lens, kv_heads, d, 16, device=DEVICE)
    q = torch.randn(len(lens), heads, d, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEVICE)
    seq = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    out, part, ml = dec.kv_decode_attention_triton(q, kc, vc, km, vm, table, seq, None, d ** -0.5, 320,
                                                   return_partials=True)
    assert part.shape[2] > 1  # splits to combine
    torch.testing.assert_close(combine_splits_ref(part.cpu(), ml.cpu(), dtype), out.cpu(),
                               **({"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}))
    perm = _perm(heads * d).to(DEVICE)
    unfused = quantize_activation_triton(out.reshape(len(lens), -1), perm, 32, 64, 0.9)
    fused = combine_quantize_triton(part, ml, perm, 32, 64, 0.9, dtype)
    assert_quantized_close(fused, tuple(t.cpu() for t in unfused), 64,
                           producer_ulp=0.0 if dtype == torch.float32 else torch.finfo(dtype).eps)
    ref = decode_attention_ref(q.cpu(), kc.cpu(), vc.cpu(), km.cpu(), vm.cpu(), table.cpu(), seq.cpu(), None,
                               d ** -0.5)
    torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_op_dispatch_and_opcheck():
    part, ml = partials(2, 2, 6, 64, seed=5)
    perm = _perm(128)
    want = quantize_activation_ref(combine_splits_ref(part, ml, torch.bfloat16).reshape(2, -1), perm, 32, 32, 0.9)
    got = combine_quantize(part, ml, perm, 32, 32, 0.9, torch.bfloat16)  # CPU tensors: the reference
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    opcheck(torch.ops.atom_ao.combine_quantize.default, (part, ml, perm, 32, 32, 0.9, torch.bfloat16))
    if DEVICE == "cuda":
        opcheck(torch.ops.atom_ao.combine_quantize.default,
                (part.cuda(), ml.cuda(), perm.cuda(), 32, 32, 0.9, torch.bfloat16))


@pytest.mark.parametrize("bad, match", [
    (dict(part=torch.zeros(2, 2, 6, 64, dtype=torch.bfloat16)), "part must be float32"),
    (dict(ml=torch.zeros(2, 2, 5, 2)), "ml must be float32"),
    (dict(perm=torch.arange(64, dtype=torch.int32)), "perm has shape"),
    (dict(group_size=33), "bad group_size"),
    (dict(out_dtype=torch.int8), "out_dtype"),
])
def test_bad_input_is_refused(bad, match):
    part, ml = partials(2, 2, 6, 64)
    args = dict(part=part, ml=ml, perm=_perm(128), n_outliers=32, group_size=32, clip_ratio=0.9,
                out_dtype=torch.bfloat16)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        combine_quantize_triton(**args)
