"""Sibling linears that read one activation (q/k/v, gate/up) as one GEMM.

    quantize_(model, atom_config())
    atom_ao.unwrap_weights(model)
    atom_ao.fuse_projections(model)    # after .to(device), before torch.compile
    atom_ao.unfuse_projections(model)  # back to one AtomLinear each (optional)

A transformers Llama calls ``q_proj(x)``, ``k_proj(x)`` and ``v_proj(x)`` one after the other
(and ``gate_proj`` / ``up_proj``): Atom already quantizes ``x`` once for them (the Inductor pass),
but each still runs a GEMM of its own, a kernel launch and a ramp-up each; in a decode step those
small GEMMs read their weights well below the copy bandwidth. gpt-fast's ``wqkv`` and vLLM's
``gate_up_proj`` stack the weights into one linear; ``fuse_projections`` does that without
touching the model's code: the parent gets one ``FusedProjections`` (an AtomLinear over the
stacked rows) and each sibling becomes an ``AtomProjection`` that returns its columns of the
group's output. The first sibling called with an input runs the one GEMM; the others called
with the same tensor take their columns of it (within a forward, in eager and while Dynamo
traces: the compiled graph has one GEMM), and the last one drops it. Each output row of a W4A4
GEMM depends on that weight row only, so the outputs are the unfused ones.

Only groups whose linears share one permutation (one quantized activation) and one format are
fused: ``atom_ao``'s flows give q/k/v and gate/up one permutation. The state dict keeps each
sibling's own weight under its own name, so checkpoints do not change.
"""

from __future__ import annotations

import torch

from atom_ao.handler import SAME_INPUT  # linears a parent feeds from one activation, by name
from atom_ao.tensor import AtomQuantTensor
from atom_ao.unwrap import _PARTS, AtomLinear

__all__ = ["AtomProjection", "FusedProjections", "fuse_projections", "unfuse_projections"]


class FusedProjections(AtomLinear):
    """One AtomLinear over its siblings' stacked rows, and the output they share in a forward.
    Registered on the parent under ``fused_<names>``; it saves nothing (the siblings do)."""

    def _init_group(self, names: tuple[str, ...], bounds: list[tuple[int, int]]) -> None:
        self.names, self.bounds = names, bounds
        self._x = self._y = None
        self._x_version, self._served = -1, 0

    def member_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self._x is not x or (not torch.compiler.is_compiling() and self._x_version != x._version):
            self._x, self._y, self._served = x, self(x), 0  # a new input: every sibling's rows at once
            if not torch.compiler.is_compiling():
                self._x_version = x._version  # eager: an in-place change of x is a new input
        y = self._y
        self._served += 1
        if self._served == len(self.bounds):  # the last sibling: hold no tensors between forwards
            self._x = self._y = None
        start, stop = self.bounds[i]
        return y[..., start:stop]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        pass  # the siblings' weights are the checkpoint

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        pass

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, siblings={list(zip(self.names, self.bounds))}"


class AtomProjection(torch.nn.Module):
    """A fused sibling: its columns of the group's output; ``weight`` / ``bias`` are its rows."""

    def __init__(self, group: FusedProjections, index: int):
        super().__init__()
        start, stop = group.bounds[index]
        self.in_features, self.out_features, self.index = group.in_features, stop - start, index
        object.__setattr__(self, "group", group)  # not a submodule: the parent owns it once

    @property
    def weight(self) -> AtomQuantTensor:
        start, stop = self.group.bounds[self.index]
        return self.group.weight[start:stop]

    @property
    def bias(self) -> torch.Tensor | None:
        start, stop = self.group.bounds[self.index]
        return None if self.group.bias is None else self.group.bias[start:stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.member_output(self.index, x)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        if self.group.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Copy a checkpoint's weight (and bias) into this sibling's rows of the group."""
        start, stop = self.group.bounds[self.index]
        w = state_dict.get(prefix + "weight")
        if w is None:
            if strict:
                missing_keys.append(prefix + "weight")
        elif not isinstance(w, AtomQuantTensor) or tuple(w.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"{prefix}weight: a fused projection loads an AtomQuantTensor of shape "
                              f"{(self.out_features, self.in_features)}, got {type(w).__name__} "
                              f"{tuple(w.shape)}")
        elif not torch.equal(w.perm.to(self.group.perm.device), self.group.perm) or \
                w.group_size != self.group.group_size:
            error_msgs.append(f"{prefix}weight: its permutation or group size differs from its fused siblings'; "
                              "atom_ao.unfuse_projections(model) first")
        else:
            with torch.no_grad():
                for n in _PARTS[:4]:
                    getattr(self.group, n)[start:stop].copy_(getattr(w, n))
        b = state_dict.get(prefix + "bias")
        if self.group.bias is not None:
            if b is not None:
                with torch.no_grad():
                    self.group.bias[start:stop].copy_(b)
            elif strict:
                missing_keys.append(prefix + "bias")

    def extra_repr(self) -> str:
        start, stop = self.group.bounds[self.index]
        return f"in_features={self.in_features}, out_features={self.out_features}, rows {start}:{stop} of the fused group"


def _new_atom_linear(cls, w: AtomQuantTensor, bias: torch.Tensor | None):
    lin = cls.__new__(cls)
    torch.nn.Module.__init__(lin)
    lin.out_features, lin.in_features = w.shape
    lin.register_parameter("bias", None if bias is None else torch.nn.Parameter(bias, requires_grad=False))
    lin._set_weight(w)
    return lin


def _fusable(linears: list) -> bool:
    a = linears[0]
    if not all(type(m) is AtomLinear for m in linears):
        return False
    same = lambda m: (m.in_features == a.in_features and m.group_size == a.group_size  # noqa: E731
                      and m.act_clip_ratio == a.act_clip_ratio and m.weight_dtype == a.weight_dtype
                      and m.outlier_qdata.shape[1] == a.outlier_qdata.shape[1] and m.qdata.device == a.qdata.device
                      and (m.bias is None) == (a.bias is None)
                      and (m.perm is a.perm or torch.equal(m.perm, a.perm)))
    return all(same(m) for m in linears[1:])


def fuse_projections(model: torch.nn.Module) -> int:
    """Fuse each group of sibling ``AtomLinear``s (``unwrap_weights`` first) that read one
    activation into one GEMM, in place; returns how many groups were fused. Call it after
    ``.to(device)`` (a move keeps the fusion, but the stacked copy is made where the weights are)."""
    fused = 0
    for parent in list(model.modules()):
        for names in SAME_INPUT:
            linears = [parent._modules.get(n) for n in names]
            if any(m is None for m in linears) or not _fusable(linears):
                continue
            bounds, row = [], 0
            for m in linears:
                bounds.append((row, row + m.out_features))
                row += m.out_features
            a = linears[0]
            cat = lambda n: torch.cat([getattr(m, n) for m in linears])  # noqa: E731
            w = AtomQuantTensor(cat("qdata"), cat("scale"), cat("outlier_qdata"), cat("outlier_scale"), a.perm,
                                a.group_size, a.act_clip_ratio, a.weight_dtype)
            bias = None if a.bias is None else torch.cat([m.bias.detach() for m in linears])
            group = _new_atom_linear(FusedProjections, w, bias)
            group._init_group(tuple(names), bounds)
            parent.add_module("fused_" + "_".join(names), group)
            for i, n in enumerate(names):
                parent._modules[n] = AtomProjection(group, i)
            fused += 1
    return fused


def unfuse_projections(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``fuse_projections``: each sibling becomes an AtomLinear holding a copy of its rows."""
    for parent in list(model.modules()):
        for key, group in list(parent._modules.items()):
            if not isinstance(group, FusedProjections):
                continue
            for n in group.names:
                member = parent._modules[n]
                w = member.weight
                w = AtomQuantTensor(*(getattr(w, p).clone() for p in _PARTS[:4]), w.perm, w.group_size,
                                    w.act_clip_ratio, w.dtype)
                parent._modules[n] = _new_atom_linear(AtomLinear, w, None if member.bias is None else
                                                      member.bias.detach().clone())
            del parent._modules[key]
    return model
