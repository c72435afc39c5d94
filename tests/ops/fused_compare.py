"""Comparing a fused quantizer with its reference: exact integer codes except rare flips.

The fused kernels compute their producer (RMSNorm, SiLU * up) in float32 like the reference but
sum the mean of squares in another order and use the device's exp, so a float32 value may
differ by an ulp and, rarely, land on the other side of a rounding boundary: that code then
differs by exactly one step. Scales agree to float32 rounding, unless the producer rounds its
output to a 16-bit dtype before the group max (Llama's RMSNorm casts before the weight): then an
ulp of float32 can move a value to the neighbouring bf16/fp16 value, and that group's scale moves by
an ulp of the 16-bit dtype (seen on the H100: 3 of 159744 bf16 scales, 0.8% off) — allowed for a
rare few scales when ``producer_ulp`` (that dtype's relative ulp, ``torch.finfo(dtype).eps``) is given.
"""

import torch

from atom_ao.format import unpack_int4


def _assert_scales_close(got, want, producer_ulp, max_flip_frac, name):
    exact = torch.isclose(got, want, rtol=1e-5, atol=0, equal_nan=True)
    if producer_ulp == 0 or exact.all():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")
        return
    off = ~exact
    frac = off.float().mean().item()
    assert frac <= max_flip_frac, f"{name}: {frac:.2%} of the scales differ beyond float32 rounding"
    rel = ((got[off] - want[off]).abs() / want[off].abs()).max().item()
    # two roundings to the 16-bit dtype (before and after the weight) can each move by one ulp
    assert rel <= 2 * producer_ulp * 1.01, f"{name}: a scale differs by {rel:.3%}, more than 2 ulps of the producer dtype"


def assert_quantized_close(got, want, group_size, max_flip_frac=0.005, producer_ulp=0.0):
    packed, scale, outl, outl_scale = (t.cpu() for t in got)
    w_packed, w_scale, w_outl, w_outl_scale = want
    for g, w, name in ((packed, w_packed, "packed"), (scale, w_scale, "scale"), (outl, w_outl, "outliers"),
                       (outl_scale, w_outl_scale, "outlier_scale")):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
    _assert_scales_close(scale, w_scale, producer_ulp, max_flip_frac, "scale")
    _assert_scales_close(outl_scale, w_outl_scale, producer_ulp, max_flip_frac, "outlier_scale")
    for g, w, name in ((unpack_int4(packed, group_size), unpack_int4(w_packed, group_size), "int4"),
                       (outl, w_outl, "int8")):
        diff = (g.int() - w.int()).abs()
        if diff.numel() == 0:
            continue
        assert diff.max() <= 1, f"{name}: a code differs by {diff.max()} (only boundary flips of 1 allowed)"
        frac = (diff > 0).float().mean().item()
        assert frac <= max_flip_frac, f"{name}: {frac:.2%} of the codes differ"
