"""Chain the one-token gemvs of a compiled graph: each asks the next one's weights into L2.

At batch 1 every linear is a gemv (``atom_ao.ops.w4a4_gemv``) that streams its weights from HBM
once, and between two of them run kernels that read little (the quantizers, the attention of one
token). This pass gives each gemv launch the next gemv's weights as ``pf_ptr`` (with ``PF`` and
``PF_LINES``): once a program of the first is done with its own weights it requests its share of
the next one's (``GEMV_PREFETCH_MB`` of them), so HBM keeps streaming through the first kernel's
tail, the small kernels between and the next one's launch. It changes no value, only where bytes
sit when the next gemv loads them.

It works on the traced kernel launches (``triton_kernel_wrapper_*`` nodes), as ``w4a4_gemm``
is a ``triton_op`` that Inductor sees into; the weights are graph inputs, so the next weight's
(view) nodes can move ahead of the first launch. The last gemv of a graph gets no link.
"""

from __future__ import annotations

import importlib
import os

import torch
from torch.fx import Graph, Node

from atom_ao.inductor.match import is_call

# Off until timed in the model (atom_ao.ops.w4a4_gemv says how the kernel's requests were timed).
ENABLED = os.environ.get("ATOM_AO_GEMV_PREFETCH", "0") == "1"

_VIEW_OPS = (torch.ops.aten.view.dtype, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
             torch.ops.aten._unsafe_view.default, torch.ops.aten.detach.default,
             torch.ops.aten.alias.default)


def _wrappers():
    from torch._higher_order_ops.triton_kernel_wrap import (
        triton_kernel_wrapper_functional,
        triton_kernel_wrapper_mutation,
    )

    return triton_kernel_wrapper_functional, triton_kernel_wrapper_mutation


def _gemv():
    return importlib.import_module("atom_ao.ops.w4a4_gemv")


def gemv_launches(graph: Graph) -> list[Node]:
    """The graph's launches of the one-token gemv kernel, in graph order."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    kernel = _gemv()._w4a4_gemv_kernel
    # (torch wraps a kernel launched with num_warps & co. in a one-config Autotuner)
    return [n for n in graph.nodes if is_call(n, *_wrappers())
            and getattr(k := kernel_side_table.get_kernel(n.kwargs["kernel_idx"]), "fn", k) is kernel]


def launch_args(node: Node) -> dict:
    """A launch's arguments: its tensors (FX nodes) and its constants (from Inductor's side table)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    return {**kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]), **node.kwargs["kwargs"]}


def _set_args(node: Node, tensors: dict, constants: dict) -> None:
    """Set launch arguments: a constant goes where the launch keeps it (its tensor kwargs when
    traced by make_fx, Inductor's constant side table when traced by torch.compile)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    kw = dict(node.kwargs["kwargs"])
    consts = dict(kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]))
    kw.update(tensors)
    for name, v in constants.items():
        (kw if name in kw else consts)[name] = v
    node.kwargs = {**node.kwargs, "kwargs": kw,
                   "constant_args_idx": kernel_side_table.add_constant_args(consts)}


def _hoist_before(node: Node, target: Node) -> bool:
    """Move ``node`` and the view chain under it ahead of ``target``, if that chain starts at a
    graph input (placeholder / get_attr); False (nothing moved) otherwise."""
    chain, n = [], node
    while is_call(n, *_VIEW_OPS):
        chain.append(n)
        n = n.args[0]
    if not (isinstance(n, Node) and n.op in ("placeholder", "get_attr")):
        return False
    order = {x: i for i, x in enumerate(target.graph.nodes)}
    for v in reversed(chain):  # the input first
        if order[v] > order[target]:
            target.prepend(v)
    return True


def link_gemvs(graph: Graph) -> int:
    """Give each gemv launch the next one's weights to prefetch; returns the links made."""
    gemv = _gemv()
    if gemv.GEMV_PREFETCH_MB <= 0:
        return 0
    launches = gemv_launches(graph)
    linked = 0
    for cur, nxt in zip(launches, launches[1:]):
        w = nxt.kwargs["kwargs"]["w_ptr"]  # the next weights' int32 words (a view of a graph input)
        v = w.meta.get("val") if isinstance(w, Node) else None
        if v is None or not v.is_contiguous() or launch_args(cur).get("PF", 0) or not _hoist_before(w, cur):
            continue
        lines = min(v.numel() * v.element_size(), int(gemv.GEMV_PREFETCH_MB * 2 ** 20)) // 128
        if lines == 0:
            continue
        _set_args(cur, {"pf_ptr": w}, {"PF_LINES": lines, "PF": 2 if gemv.GEMV_PREFETCH_KEEP else 1})
        linked += 1
    return linked


def settings() -> tuple:
    """What the pass's output depends on beyond its source (for the FX graph cache key)."""
    gemv = _gemv()
    return (ENABLED, gemv.GEMV_PREFETCH_MB, gemv.GEMV_PREFETCH_KEEP)
