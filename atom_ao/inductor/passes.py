"""The post-grad graph pass: dedupe, then fuse the atom_ao activation quantizers into their
producers. Hand-written over the FX graph (no pattern-matcher tracing), so it reads the same on
the torch releases whose decompositions differ in detail.

1. dedupe: quantize_activation nodes reading the same tensor with the same permutation tensor
   and (n_outliers, group_size, clip) become one. atom_ao's quantize flows give every linear
   fed one activation one shared permutation tensor (``atom_ao.handler``); each weight's copy
   reaches the graph as an input of its own, so "the same" is read from the inputs' (fake)
   storage. Weights built with different permutations keep a quantizer each (until session 20
   the key left the permutation out, and such a pair compiled to wrong results).
2. RMSNorm -> quantize  =>  ``atom_ao.rmsnorm_quantize`` (norm output not kept: it only fed
   the quantizer). The graph's row statistic (``rsqrt``) stays and is passed as ``rstd``:
   Inductor fuses that reduction into the kernel producing x (a residual add), so the fused op
   reads x once.
3. silu(gate) * up -> quantize  =>  ``atom_ao.silu_mul_quantize``.

(The decode attention's split combine + o_proj's quantizer as one kernel on the split partials was
tried in sessions 39-40 and dropped: on the H200 it was at best a tie with the reduce kernel and
quantizer it replaced; see docs/speed_history.md.)
"""

from __future__ import annotations

import os

import torch
from torch.fx import Graph, Node

from atom_ao.inductor.match import aten, is_call, only_used_by, through_views, val
from atom_ao.inductor.rmsnorm import match_rmsnorm
from atom_ao.inductor.silu_mul import match_silu_mul

QUANTIZE = torch.ops.atom_ao.quantize_activation.default
RMSNORM_QUANTIZE = torch.ops.atom_ao.rmsnorm_quantize.default
SILU_MUL_QUANTIZE = torch.ops.atom_ao.silu_mul_quantize.default


def _set_val(node: Node) -> None:
    """Record the FakeTensor output of a new node, as Inductor's own passes do."""
    from torch._guards import detect_fake_mode

    args = [val(a) if isinstance(a, Node) else a for a in node.args]
    mode = detect_fake_mode([a for a in args if isinstance(a, torch.Tensor)])
    if mode is None:
        return
    with mode:
        node.meta["val"] = node.target(*args)


def _call(graph: Graph, target, args) -> Node:
    n = graph.call_function(target, tuple(args))
    _set_val(n)
    return n


def _quantize_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if is_call(n, QUANTIZE)]


def _quantize_args(q: Node):
    """(x, perm, n_outliers, group_size, clip_ratio, asymmetric) of a quantize node."""
    asym = q.args[5] if len(q.args) > 5 else q.kwargs.get("asymmetric", False)
    return (*q.args[:5], bool(asym))


def _tensor_identity(n: Node):
    """What tensor a node is: its fake value's storage (and view of it) when known. Each
    AtomQuantTensor's permutation reaches the graph as an input of its own, but weights that share
    one permutation tensor share its (fake) storage."""
    v = val(n)
    if isinstance(v, torch.Tensor):
        try:
            return (v.untyped_storage()._cdata, str(v.storage_offset()), str(tuple(v.shape)), str(v.stride()))  # SymInts: str
        except Exception:  # noqa: BLE001  (no storage to read: fall back to the node)
            pass
    return through_views(n)


def dedupe(graph: Graph) -> int:
    """One quantize per (input, params); returns how many were removed."""
    first: dict[tuple, Node] = {}
    removed = 0
    for q in _quantize_nodes(graph):
        x, perm, n_out, gs, clip, asym = _quantize_args(q)
        key = (through_views(x), str(tuple(val(x).shape)) if val(x) is not None else None, _tensor_identity(perm),
               n_out, gs, clip, asym)  # SymInts: str
        keep = first.setdefault(key, q)
        if keep is not q:
            q.replace_all_uses_with(keep)
            graph.erase_node(q)
            removed += 1
    return removed


def _feeds_only_quantizers(src: Node) -> bool:
    return only_used_by(src, lambda u: is_call(u, QUANTIZE))


def _reshape_2d(graph: Graph, x: Node, k: int) -> Node:
    return _call(graph, aten.reshape.default, (x, [-1, k]))


def fuse(graph: Graph) -> dict[str, int]:
    """Replace quantize nodes fed by RMSNorm or silu * up with the fused ops."""
    counts = {"rmsnorm_quantize": 0, "silu_mul_quantize": 0}
    for q in _quantize_nodes(graph):
        x, perm, n_out, gs, clip, asym = _quantize_args(q)
        extra = (asym,) if asym else ()  # the fused ops' asymmetric flag, only when set
        src = through_views(x)
        if not _feeds_only_quantizers(src):
            continue  # the product is needed elsewhere too: fusing would compute it twice
        k = val(x).shape[-1]
        norm = match_rmsnorm(src)
        if norm is not None:
            with graph.inserting_before(q):
                x2 = _reshape_2d(graph, norm.x, k)
                tail = extra
                if norm.rstd is not None:
                    tail = (asym, _call(graph, aten.reshape.default, (norm.rstd, [-1])))
                fused = _call(graph, RMSNORM_QUANTIZE,
                              (x2, norm.weight, norm.eps, perm, n_out, gs, clip, norm.cast_before_weight, *tail))
            counts["rmsnorm_quantize"] += 1
        else:
            found = match_silu_mul(src)
            if found is None:
                continue
            gate, up = found
            with graph.inserting_before(q):
                fused = _call(graph, SILU_MUL_QUANTIZE,
                              (_reshape_2d(graph, gate, k), _reshape_2d(graph, up, k), perm, n_out, gs, clip, *extra))
            counts["silu_mul_quantize"] += 1
        q.replace_all_uses_with(fused)
        graph.erase_node(q)
    return counts


# ``ATOM_AO_FUSE_PRODUCERS=0``: dedupe only, no producer fusion (an A/B switch for the batch-1 decode
# step, where a fused quantizer's extra reads may cost more than the launch it saves: session 24's
# profile had transformers' Llama at 23.4 us a layer of quantizer and elementwise kernels against
# 17.9 in gpt.py's step, both fused, the difference not explained)
FUSE_ENV_VAR = "ATOM_AO_FUSE_PRODUCERS"


def fuse_producers() -> bool:
    return os.environ.get(FUSE_ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def run(graph: Graph) -> dict[str, int]:
    """The whole pass; returns what it did (also kept in ``LAST_COUNTS`` for tests and logs)."""
    stats = {"deduped": dedupe(graph), **(fuse(graph) if fuse_producers() else {})}
    graph.eliminate_dead_code()
    LAST_COUNTS.clear()
    LAST_COUNTS.update(stats)
    return stats


LAST_COUNTS: dict[str, int] = {}
