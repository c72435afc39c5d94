"""Comparing a fused quantizer with its reference: exact integer codes except rare flips.

The fused kernels compute their producer (RMSNorm, SiLU * up) in float32 like the reference but
sum the mean of squares in another order and use the device's exp, so a float32 value may
differ by an ulp and, rarely, land on the other side of a rounding boundary: that code then
differs by exactly one step. Scales agree to float32 rounding.
"""

import torch

from atom_ao.format import unpack_int4


def assert_quantized_close(got, want, group_size, max_flip_frac=0.005):
    packed, scale, outl, outl_scale = (t.cpu() for t in got)
    w_packed, w_scale, w_outl, w_outl_scale = want
    for g, w, name in ((packed, w_packed, "packed"), (scale, w_scale, "scale"), (outl, w_outl, "outliers"),
                       (outl_scale, w_outl_scale, "outlier_scale")):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, w.shape, g.dtype, w.dtype)
    torch.testing.assert_close(scale, w_scale, rtol=1e-5, atol=0, equal_nan=True)
    torch.testing.assert_close(outl_scale, w_outl_scale, rtol=1e-5, atol=0, equal_nan=True)
    for g, w, name in ((unpack_int4(packed, group_size), unpack_int4(w_packed, group_size), "int4"),
                       (outl, w_outl, "int8")):
        diff = (g.int() - w.int()).abs()
        if diff.numel() == 0:
            continue
        assert diff.max() <= 1, f"{name}: a code differs by {diff.max()} (only boundary flips of 1 allowed)"
        frac = (diff > 0).float().mean().item()
        assert frac <= max_flip_frac, f"{name}: {frac:.2%} of the codes differ"
