"""Quantized linears whose weight is held as its five plain tensors: the form to compile.

    quantize_(model, atom_config())
    atom_ao.unwrap_weights(model)   # before torch.compile / transformers' compiled generate
    atom_ao.wrap_weights(model)     # back to nn.Linear + AtomQuantTensor (optional)

Why: a compiled call takes each AtomQuantTensor parameter as an input, and on every call
Dynamo's guards check it (a Python metadata check plus its five inner tensors) and, on torch
2.11, AOTAutograd unwraps it into those five tensors in Python. On the H200's host (session
19) that was ~38 us a quantized weight a decode step, so a 4-layer SmolLM2 step whose graph
runs in ~0.2 ms on the GPU took 1.7 ms of CPU. ``AtomLinear`` keeps the same five tensors as
plain buffers and calls the same two ops (``linear_from_parts``), so the compiled call sees
plain tensors only; the numbers are identical.

Everything else still sees an Atom weight: ``module.weight`` rebuilds the AtomQuantTensor (no
copy), ``state_dict()`` / ``save_quantized`` write it under ``<name>.weight`` as before and
``load_state_dict`` takes it back. Weights with asymmetric activations stay as they are.
"""

from __future__ import annotations

import torch

from atom_ao.tensor import AtomQuantTensor, check_linear_input, linear_from_parts

__all__ = ["AtomLinear", "unwrap_weights", "wrap_weights"]

_PARTS = AtomQuantTensor.tensor_data_names  # qdata, scale, outlier_qdata, outlier_scale, perm


class AtomLinear(torch.nn.Linear):
    """An nn.Linear whose Atom weight is five buffers (see the module docstring). Made from a
    quantized nn.Linear in place by ``unwrap_weights``; not constructed directly."""

    # set by _set_weight: group_size, act_clip_ratio, weight_dtype, and the buffers in _PARTS

    @property
    def weight(self) -> AtomQuantTensor:
        return AtomQuantTensor(*(getattr(self, n) for n in _PARTS), self.group_size, self.act_clip_ratio,
                               self.weight_dtype)

    def _set_weight(self, w: AtomQuantTensor) -> None:
        if w.act_asymmetric:
            raise ValueError("AtomLinear holds weights with symmetric activations only")
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"AtomLinear: weight of shape {tuple(w.shape)}, module is "
                             f"({self.out_features}, {self.in_features})")
        for n in _PARTS:  # not persistent: state_dict writes the rebuilt weight instead
            self.register_buffer(n, getattr(w, n), persistent=False)
        self.group_size, self.act_clip_ratio, self.weight_dtype = w.group_size, w.act_clip_ratio, w.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(x, self.in_features, self.qdata.device)
        return linear_from_parts(x, self.qdata, self.scale, self.outlier_qdata, self.outlier_scale, self.perm,
                                 self.bias, self.group_size, self.act_clip_ratio)

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cuda() as on the AtomQuantTensor: a dtype changes only the logical
        # (activation) dtype; applied to the float32 scale buffers it would round them instead
        w = fn(self.weight)
        for n in _PARTS:
            del self._buffers[n]
        try:
            super()._apply(fn, recurse)
        finally:
            self._set_weight(w)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        w = state_dict.get(prefix + "weight")
        if isinstance(w, AtomQuantTensor):
            self._set_weight(w)
        elif strict:
            missing_keys.append(prefix + "weight")
        super()._load_from_state_dict({k: v for k, v in state_dict.items() if k != prefix + "weight"}, prefix,
                                      local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, n_outliers={self.outlier_qdata.shape[1]}, unwrapped")


def unwrap_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Turn every nn.Linear whose weight is a (symmetric) AtomQuantTensor into an ``AtomLinear``,
    in place; returns ``model``. Call it after quantizing and before compiling."""
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        w = module._parameters.get("weight")
        if not isinstance(w, AtomQuantTensor) or w.act_asymmetric:
            continue
        del module.weight
        module.__dict__.pop("extra_repr", None)  # the handler's per-instance repr reads .weight
        module.__class__ = AtomLinear
        module._set_weight(w)
    return model


def wrap_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``unwrap_weights``: each AtomLinear becomes an nn.Linear with an AtomQuantTensor weight."""
    from atom_ao.handler import _atom_linear_extra_repr  # the repr quantize_ gives its linears

    for module in model.modules():
        if type(module) is not AtomLinear:
            continue
        w = module.weight
        for n in _PARTS:
            del module._buffers[n]
        for n in ("group_size", "act_clip_ratio", "weight_dtype"):
            delattr(module, n)
        module.__class__ = torch.nn.Linear
        module.weight = torch.nn.Parameter(w, requires_grad=False)
        module.extra_repr = _atom_linear_extra_repr.__get__(module)
    return model
