"""Recognise ``silu(gate) * up`` in the post-grad graph: ``aten.silu`` left whole, or the
decompositions ``g / (1 + exp(-g))`` and ``g * sigmoid(g)`` in float32 cast back to the
input dtype (what eager computes: silu rounded to the input dtype, then the product)."""

from __future__ import annotations

from torch.fx import Node

from atom_ao.inductor.match import aten, as_float32, dtype, is_call, operands, scalar, through_convert, val


def _silu_input(s: Node):
    """The gate g if ``s`` is silu(g) in g's dtype, else None."""
    if is_call(s, aten.silu.default):
        return s.args[0]
    inner, _ = through_convert(s)
    gate = None
    if is_call(inner, aten.div.Tensor):
        num, den = inner.args[:2]
        if is_call(den, aten.add.Tensor, aten.add.Scalar):
            a, b = den.args[:2]
            e = a if scalar(b) == 1 else b if scalar(a) == 1 else None
            if is_call(e, aten.exp.default) and is_call(e.args[0], aten.neg.default) and e.args[0].args[0] is num:
                gate = num
    elif is_call(inner, aten.mul.Tensor):
        for g, sig in (operands(inner), operands(inner)[::-1]):
            if is_call(sig, aten.sigmoid.default) and sig.args[0] is g:
                gate = g
                break
    if gate is None:
        return None
    g, ok = as_float32(gate)
    if not ok or dtype(g) != dtype(s):
        return None
    return g


def match_silu_mul(out: Node):
    """(gate, up) if ``out`` is silu(gate) * up with gate and up of one shape and dtype."""
    if not is_call(out, aten.mul.Tensor):
        return None
    for s, up in (operands(out), operands(out)[::-1]):
        gate = _silu_input(s) if isinstance(s, Node) else None
        if gate is None or not isinstance(up, Node):
            continue
        gv, uv = val(gate), val(up)
        if gv is None or uv is None or gv.shape != uv.shape or gv.dtype != uv.dtype or dtype(out) != gv.dtype:
            continue
        return gate, up
    return None
