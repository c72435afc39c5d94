"""Simulated ("fake-quantized") Atom linears, for fast ablations on CPU.

``simulate_(model)`` replaces every linear holding an ``AtomQuantTensor`` by a float linear whose
weight is the dequantized weight and whose input is fake-quantized exactly as the W4A4 GEMM
quantizes it (``atom_ao.gptq.fake_quantize_activation``): the same function as the real path up to
float32 summation order (the real path sums exact integer group dots), at float matmul speed.
Either side can be switched off, which is what the ablation needs: ``weights=False`` keeps the
float weight (activations-only quantization), ``activations=False`` keeps float activations
(weights-only quantization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atom_ao.gptq import fake_quantize_activation
from atom_ao.tensor import AtomQuantTensor


class SimulatedAtomLinear(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias, perm, n_outliers: int, group_size: int, act_clip_ratio: float,
                 activations: bool = True, asymmetric: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.register_buffer("perm", perm)
        self.n_outliers, self.group_size, self.act_clip_ratio = n_outliers, group_size, act_clip_ratio
        self.activations, self.asymmetric = activations, asymmetric
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x):
        if self.activations:
            lead = x.shape[:-1]
            xq = fake_quantize_activation(x.reshape(-1, x.shape[-1]), self.perm, self.n_outliers, self.group_size,
                                          self.act_clip_ratio, self.asymmetric)
            x = xq.to(x.dtype).reshape(*lead, x.shape[-1])
        return F.linear(x, self.weight, self.bias)


def simulate_(model: torch.nn.Module, float_model: torch.nn.Module | None = None, weights: bool = True,
              activations: bool = True, only: str | None = None) -> torch.nn.Module:
    """In place; ``float_model`` (same architecture, float weights) is needed for ``weights=False``.
    ``only``: a substring of the layer names to keep quantized; the other Atom linears get their
    float weight back (needs ``float_model``)."""
    float_mods = dict(float_model.named_modules()) if float_model is not None else {}
    if (only is not None or not weights) and any(hasattr(m, "_atom_folded_perm") for m in model.modules()):
        # folded gate/up rows and down_proj columns no longer line up with the float model's
        raise ValueError("simulate_: this model's MLP permutations were folded (quantize_calibrated(fold=True)); "
                         "mixing its layers with float ones (only=..., weights=False) needs fold=False")
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, torch.nn.Linear) or not isinstance(mod.weight, AtomQuantTensor):
            continue
        w = mod.weight
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        keep = only is None or only in name
        if not keep or not weights:
            if name not in float_mods:
                raise ValueError("simulate_: float_model is needed for weights=False or only=...")
            wf = float_mods[name].weight.detach().to(w.dtype)
        else:
            wf = w.dequantize()
        if not keep:
            new = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
            new.weight = torch.nn.Parameter(wf, requires_grad=False)
            new.bias = mod.bias
        else:
            new = SimulatedAtomLinear(wf, mod.bias, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio,
                                      activations=activations, asymmetric=w.act_asymmetric)
        setattr(parent, child, new)
    return model
