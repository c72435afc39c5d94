"""Small helpers to read Inductor's post-grad FX graph: node tests and walking through the
leading-dimension reshapes a linear puts around its activation."""

from __future__ import annotations

import torch
from torch.fx import Node

aten = torch.ops.aten
prims = torch.ops.prims

VIEWS = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
CONVERTS = (prims.convert_element_type.default, aten._to_copy.default)


def is_call(n, *targets) -> bool:
    return isinstance(n, Node) and n.op == "call_function" and n.target in targets


def val(n):
    """The FakeTensor Inductor recorded for a node (None for non-tensors)."""
    v = n.meta.get("val") if isinstance(n, Node) else None
    return v if isinstance(v, torch.Tensor) else None


def dtype(n):
    v = val(n)
    return v.dtype if v is not None else None


def through_views(n: Node) -> Node:
    """The node behind reshapes that keep the last dim (how ``x.reshape(-1, K)`` traces)."""
    while is_call(n, *VIEWS) and val(n.args[0]) is not None and val(n.args[0]).shape[-1:] == val(n).shape[-1:]:
        n = n.args[0]
    return n


def through_convert(n: Node, to=None):
    """(input, converted?) of an optional dtype conversion node (to ``to`` when given)."""
    if is_call(n, *CONVERTS):
        target_dtype = n.args[1] if n.target is CONVERTS[0] else n.kwargs.get("dtype")
        if to is None or target_dtype == to:
            return n.args[0], True
    return n, False


def as_float32(n: Node):
    """The node whose float32 value ``n`` is: ``n`` itself when float32, the input of a
    conversion to float32 otherwise; (source, ok)."""
    src, conv = through_convert(n, torch.float32)
    if conv:
        return src, True
    return n, dtype(n) == torch.float32


def operands(n: Node):
    """The two tensor operands of a binary op, for commutative matching."""
    return [a for a in n.args[:2]]


def scalar(a):
    return a if isinstance(a, (int, float)) and not isinstance(a, bool) else None


def only_used_by(n: Node, ok) -> bool:
    """Every user of ``n`` (through view chains) satisfies ``ok``."""
    for u in n.users:
        if is_call(u, *VIEWS):
            if not only_used_by(u, ok):
                return False
        elif not ok(u):
            return False
    return True
