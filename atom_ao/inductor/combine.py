"""Recognise the decode attention's split combine feeding o_proj's quantizer in the post-grad graph.

``atom_ao::kv_decode_attention`` is a ``triton_op``: by the post-grad pass it has become its
kernel launches, the split kernel and then (with more than one split) the reduce kernel
``_decode_reduce_kernel``, which writes the (B, H, D) output from the partials. When that output
only reaches a ``quantize_activation`` through views that keep its element order (the
``(B, H, 1, D) -> (B, 1, H, D) -> (B, H * D)`` of a decoder layer at one token a sequence), the
reduce launch and the quantizer can be one ``atom_ao::combine_quantize`` on the partials.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

from atom_ao.inductor.match import aten, is_call, val

# views that may sit between the attention output and the quantizer's (M, K) input
# (the replay in _keeps_order and the shape checks of match_combine rule out any that reorders or drops)
_CHAIN = (aten.reshape.default, aten.view.default, aten._unsafe_view.default, aten.unsqueeze.default,
          aten.squeeze.dim, aten.squeeze.default, aten.transpose.int, aten.permute.default, aten.clone.default,
          aten.slice.Tensor, aten.alias.default)


def _reduce_kernel():
    from atom_ao.ops.kv_decode_attention import _decode_reduce_kernel

    return _decode_reduce_kernel


def _launches_reduce(wrapper: Node) -> bool:
    """Whether a ``triton_kernel_wrapper_functional`` node launches the decode reduce kernel: its
    keyword arguments are that kernel's parameters (tensors and ints by name, constexprs too).
    By name rather than through Inductor's kernel side table, whose indices a traced graph may
    not share with the table at hand."""
    if wrapper.target is not torch.ops.higher_order.triton_kernel_wrapper_functional:
        return False
    return set(wrapper.kwargs.get("kwargs", {})) == set(_reduce_kernel().arg_names)


def _keeps_order(src: Node, chain: list[Node]) -> bool:
    """Whether the views ``chain`` (from ``src`` on) read src's elements in its own row-major order:
    replayed on a small real tensor holding 0, 1, 2, ... with src's (static) shape."""
    shape = val(src).shape
    if not all(isinstance(s, int) for s in shape):
        return False
    t = torch.arange(val(src).numel()).reshape(shape)
    for n in chain:
        if any(isinstance(a, Node) for a in n.args[1:]) or any(isinstance(a, Node) for a in n.kwargs.values()):
            return False
        try:
            t = n.target(t, *n.args[1:], **n.kwargs)
        except Exception:  # noqa: BLE001  (symbolic sizes, or a view this replay cannot redo: leave it)
            return False
    return torch.equal(t.reshape(-1), torch.arange(t.numel()))


def match_combine(x: Node):
    """(part, ml, out_dtype) if the quantizer input ``x`` is the decode reduce kernel's output,
    through order-keeping views only and read by nothing else, else None."""
    chain = []
    n = x
    while is_call(n, *_CHAIN):
        if len(n.users) != 1:
            return None
        chain.append(n)
        n = n.args[0]
    chain.reverse()
    if not (isinstance(n, Node) and n.op == "call_function" and n.target is operator.getitem
            and n.args[1] == "out_ptr" and len(n.users) == 1):
        return None
    wrapper = n.args[0]
    if not (isinstance(wrapper, Node) and wrapper.op == "call_function" and _launches_reduce(wrapper)):
        return None
    args = wrapper.kwargs["kwargs"]
    part, ml = args.get("part_ptr"), args.get("ml_ptr")
    out_v, part_v, x_v = val(n), val(part), val(x)
    if part_v is None or out_v is None or x_v is None or out_v.dim() != 3 or part_v.dim() != 4:
        return None
    b, h, d = out_v.shape
    if part_v.shape[:2] != (b, h) or part_v.shape[3] != d or tuple(x_v.shape) != (b, h * d):
        return None
    if not out_v.is_contiguous() or not _keeps_order(n, chain):
        return None
    return part, ml, out_v.dtype
