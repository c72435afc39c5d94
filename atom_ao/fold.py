"""Offline folding of run-time permutations into neighbouring weights.

In a gated MLP, ``down(silu(gate(x)) * up(x))``, the input channels of ``down`` are the output
rows of ``gate`` and ``up``, and the product is elementwise. Reordering the output rows of
``gate`` and ``up`` by ``down``'s permutation makes ``down``'s input arrive already permuted,
so ``down``'s permutation becomes the identity: its activation quantizer then reads channels in
order (a contiguous copy, no gather).
"""

from __future__ import annotations

import torch

from atom_ao.tensor import AtomQuantTensor

# (gate, up, down) attribute names of the MLPs this pass recognises
MLP_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def _reorder_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> None:
    w = linear.weight
    if isinstance(w, AtomQuantTensor):
        pick = lambda t: t.index_select(0, rows.to(t.device))  # noqa: E731
        new = AtomQuantTensor(pick(w.qdata), pick(w.scale), pick(w.outlier_qdata), pick(w.outlier_scale),
                              w.perm, w.group_size, w.act_clip_ratio, w.dtype)
    else:
        new = w.detach().index_select(0, rows.to(w.device))
    linear.weight = torch.nn.Parameter(new, requires_grad=False)
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.detach().index_select(0, rows.to(linear.bias.device)),
                                         requires_grad=False)


def fold_mlp_permutations(model: torch.nn.Module) -> int:
    """Fold every gated MLP's ``down`` permutation into ``gate``/``up``; returns how many."""
    folded = 0
    for module in model.modules():
        for gate_n, up_n, down_n in MLP_NAMES:
            gate, up, down = (getattr(module, n, None) for n in (gate_n, up_n, down_n))
            if not all(isinstance(m, torch.nn.Linear) for m in (gate, up, down)):
                continue
            dw = down.weight
            if not isinstance(dw, AtomQuantTensor):
                continue
            perm = dw.perm.long()
            if torch.equal(perm, torch.arange(perm.numel(), device=perm.device)):
                continue
            _reorder_rows(gate, perm)
            _reorder_rows(up, perm)
            identity = torch.arange(perm.numel(), dtype=torch.int32, device=dw.perm.device)
            down.weight = torch.nn.Parameter(
                AtomQuantTensor(dw.qdata, dw.scale, dw.outlier_qdata, dw.outlier_scale, identity,
                                dw.group_size, dw.act_clip_ratio, dw.dtype),
                requires_grad=False,
            )
            module._atom_folded_perm = perm  # what float counterparts would need (simulate_ checks it)
            folded += 1
    return folded
