"""The comparison helper of the fused-quantizer tests must still fail on real errors."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fused_compare import assert_quantized_close  # noqa: E402

from atom_ao.ops.quantize_activation import quantize_activation_ref  # noqa: E402


def _want():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=g)  # 512 scales: one off is 0.2%, under the 0.5% allowed
    x[:, :3] *= 80
    perm = torch.randperm(256, generator=g).to(torch.int32)
    return quantize_activation_ref(x, perm, 128, 128, 1.0)


def _with_scale(want, i, factor):
    packed, scale, outl, outl_scale = (t.clone() for t in want)
    scale.view(-1)[i] *= factor
    return packed, scale, outl, outl_scale


def test_one_bf16_ulp_scale_passes_only_when_allowed():
    want = _want()
    got = _with_scale(want, 5, 1 + torch.finfo(torch.bfloat16).eps)
    assert_quantized_close(got, want, 128, producer_ulp=torch.finfo(torch.bfloat16).eps)
    with pytest.raises(AssertionError):
        assert_quantized_close(got, want, 128)


def test_large_or_frequent_scale_errors_fail():
    want = _want()
    ulp = torch.finfo(torch.bfloat16).eps
    with pytest.raises(AssertionError, match="more than 2 ulps"):
        assert_quantized_close(_with_scale(want, 5, 1.05), want, 128, producer_ulp=ulp)
    packed, scale, outl, outl_scale = (t.clone() for t in want)
    scale *= 1 + ulp  # every scale off: not a rare boundary effect
    with pytest.raises(AssertionError, match="of the scales differ"):
        assert_quantized_close((packed, scale, outl, outl_scale), want, 128, producer_ulp=ulp)
