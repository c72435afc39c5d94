"""The elementwise producers fused in front of the activation quantizers (Triton building blocks
shared by both quantizer kernels): RMSNorm's ``x * rstd * weight`` and ``silu(gate) * up``,
in float32 with the same roundings as the unfused PyTorch graph (to the input dtype where
PyTorch materialises an intermediate, to the output dtype at the end)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

RMSNORM, SILU_MUL, PLAIN = 0, 1, 2  # PLAIN: no producer (quantize_activation)
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # the X_KIND / OUT_KIND codes


@triton.jit
def _round_to(v, KIND: tl.constexpr):
    # a float32 value rounded to the dtype PyTorch stores it in (0 fp32, 1 fp16, 2 bf16)
    if KIND == 1:
        return v.to(tl.float16).to(tl.float32)
    elif KIND == 2:
        # round half to even on the bits: the interpreter's bf16 cast truncates (NaN kept as is)
        bits = v.to(tl.int32, bitcast=True)
        r = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
        return tl.where(v != v, v, r.to(tl.float32, bitcast=True))
    else:
        return v


@triton.jit
def _produce_value(a, b, w, rstd, MODE: tl.constexpr, X_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                   CAST_FIRST: tl.constexpr):
    """The producer's float32 output from its float32 inputs, all broadcastable tiles: a (x or
    gate), b (up), w (RMSNorm's weight per channel), rstd (RMSNorm's per-row statistic)."""
    if MODE == 2:
        return a
    elif MODE == 0:  # RMSNorm: x * rstd (* weight), in the order the model wrote it
        h = a * rstd
        if CAST_FIRST:  # transformers: weight * h.to(x.dtype)
            h = _round_to(h, X_KIND)
        return _round_to(h * w, OUT_KIND)
    else:  # SiLU(gate) * up: silu materialised in the input dtype, then the product
        s = _round_to(tl.math.div_rn(a, 1.0 + tl.exp(-a)), X_KIND)
        return _round_to(s * b, OUT_KIND)
