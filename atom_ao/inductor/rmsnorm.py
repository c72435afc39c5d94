"""Recognise RMSNorm in the post-grad graph, as the two common formulations trace.

transformers' Llama/Qwen/Mistral RMSNorm (``cast_before_weight=True``)::

    xf = x.to(float32); h = xf * rsqrt(mean(xf ** 2, -1, keepdim) + eps); out = weight * h.to(x.dtype)

``F.rms_norm`` after Inductor's decomposition (``cast_before_weight=False``)::

    ... same h ...; out = (h * weight).to(x.dtype)

plus ``aten.rms_norm`` / ``aten._fused_rms_norm`` left whole. For float32 models the casts are
absent and both orders are the same computation. In the two decomposed forms the ``rsqrt`` node
(the row statistic) is kept for the fused op to read: Inductor computes it in the kernel that
produces x.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import Node

from atom_ao.inductor.match import CONVERTS, aten, as_float32, dtype, is_call, operands, scalar, through_convert, val


@dataclass
class RMSNorm:
    x: Node
    weight: Node
    eps: float
    cast_before_weight: bool
    rstd: Node | None = None  # the graph's 1 / sqrt(mean(x^2) + eps) node, (..., 1) float32


def _normalised(h: Node):
    """(x, eps, rsqrt node) if ``h`` is x_f32 * rsqrt(mean(x_f32^2, -1, keepdim) + eps)."""
    if not is_call(h, aten.mul.Tensor):
        return None
    for xf, r in (operands(h), operands(h)[::-1]):
        if not is_call(r, aten.rsqrt.default) or not is_call(r.args[0], aten.add.Tensor, aten.add.Scalar):
            continue
        mean, eps = r.args[0].args[:2]
        if scalar(eps) is None or not is_call(mean, aten.mean.dim):
            continue
        dims = list(mean.args[1])
        keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
        nd = val(mean).dim() if val(mean) is not None else -1
        if not keepdim or len(dims) != 1 or dims[0] not in (-1, nd - 1):
            continue
        sq = mean.args[0]
        if is_call(sq, aten.pow.Tensor_Scalar) and sq.args[1] == 2:
            base = sq.args[0]
        elif is_call(sq, aten.mul.Tensor) and sq.args[0] is sq.args[1]:
            base = sq.args[0]
        else:
            continue
        if base is not xf:
            continue
        x, ok = as_float32(xf)
        if ok:
            return x, float(eps), r
    return None


def match_rmsnorm(out: Node) -> RMSNorm | None:
    """The RMSNorm producing ``out`` (the tensor a quantize op reads), or None."""
    if is_call(out, operator.getitem) and out.args[1] == 0 and is_call(out.args[0], aten._fused_rms_norm.default):
        out = out.args[0]
    if is_call(out, aten.rms_norm.default, aten._fused_rms_norm.default):
        x, shape, weight = out.args[:3]
        eps = out.args[3] if len(out.args) > 3 else None
        if weight is None or len(shape) != 1:
            return None
        return RMSNorm(x, weight, torch.finfo(dtype(x)).eps if eps is None else float(eps), False)
    prod, final_cast = through_convert(out)
    if not is_call(prod, aten.mul.Tensor):
        return None
    for w, h in (operands(prod), operands(prod)[::-1]):
        if val(w) is None or val(w).dim() != 1:
            continue
        inner, cast_first = through_convert(h)
        found = _normalised(inner)
        if found is None:
            continue
        x, eps, rstd = found
        if cast_first and (final_cast or dtype(h) != dtype(x)):
            continue  # a cast to some other dtype than x's: not a form the kernel rounds like
        if not cast_first and final_cast and dtype(out) != dtype(x):
            continue
        return RMSNorm(x, w, eps, cast_first, rstd if dtype(rstd) == torch.float32 else None)
    return None
