"""The ``quantize_`` handler of ``AtomConfig``: data-free, prepare and convert steps."""

from __future__ import annotations

import hashlib
import sys
import types
import weakref

import torch

from torchao.quantization.transform_module import register_quantize_module_handler

from atom_ao.config import AtomConfig
from atom_ao.gptq import gptq_quantize_weight
from atom_ao.observer import AtomObservedLinear
from atom_ao.tensor import AtomQuantTensor
from atom_ao.weight import data_free_channel_score, outlier_permutation

# Linears fed the same activation (q/k/v, gate/up) collect identical statistics; the convert
# step hands them one and the same permutation tensor, so the activation is quantized once.
_PERM_CACHE: dict[tuple, torch.Tensor] = {}
_PERM_CACHE_SIZE = 64


def _layer_name(module: torch.nn.Module) -> str:
    """Best-effort fully qualified name of the layer quantize_ is visiting, for error messages."""
    frame = sys._getframe(1)
    while frame is not None:
        fqn = frame.f_locals.get("cur_fqn")
        if isinstance(fqn, str):
            return f"layer '{fqn.rstrip('.')}' ({module.__class__.__name__}, in={module.in_features}, out={module.out_features})"
        frame = frame.f_back
    return f"{module.__class__.__name__}(in={module.in_features}, out={module.out_features})"


def _shared_permutation(score: torch.Tensor, n_outliers: int) -> torch.Tensor:
    key = (str(score.device), n_outliers, hashlib.sha1(score.double().cpu().numpy().tobytes()).hexdigest())
    perm = _PERM_CACHE.get(key)
    if perm is None:
        perm = outlier_permutation(score, n_outliers)
        if len(_PERM_CACHE) >= _PERM_CACHE_SIZE:
            _PERM_CACHE.pop(next(iter(_PERM_CACHE)))
        _PERM_CACHE[key] = perm
    return perm


# Data-free, the score comes from each weight; linears fed one activation (q/k/v, gate/up)
# are given the score of their stacked weights instead (what one fused qkv linear would get),
# so they share a permutation as in the calibrated flow, and the activation is quantized once.
SAME_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"), ("wq", "wk", "wv"),
              ("query", "key", "value"))
_GROUP_SCORES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _parent_and_name(module: torch.nn.Module):
    """(parent module, attribute name) of the linear being quantized, best effort: the module
    trees held by the callers' frames (torchao's module walk, FqnToConfig's loop) contain it."""
    frame, seen = sys._getframe(1), set()
    while frame is not None:
        for v in list(frame.f_locals.values()):
            if isinstance(v, torch.nn.Module) and v is not module and id(v) not in seen:
                seen.add(id(v))
                for parent in v.modules():
                    for name, child in parent.named_children():
                        if child is module:
                            return parent, name
        frame = frame.f_back
    return None, None


def _data_free_score(module: torch.nn.Linear) -> torch.Tensor:
    parent, name = _parent_and_name(module)
    group = next((g for g in SAME_INPUT if name in g), None) if parent is not None else None
    if group is None:
        return data_free_channel_score(module.weight.detach())
    scores = _GROUP_SCORES.setdefault(parent, {})
    if group not in scores:
        members = [getattr(parent, n, None) for n in group]
        ws = [m.weight.detach() for m in members if isinstance(m, torch.nn.Linear)
              and not isinstance(m.weight, AtomQuantTensor) and m.in_features == module.in_features]
        scores[group] = torch.stack([data_free_channel_score(w) for w in ws]).amax(dim=0)
    return scores[group]


def _atom_linear_extra_repr(self) -> str:
    return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight!r}"


def _quantize_into(linear: torch.nn.Linear, target: torch.nn.Linear, config: AtomConfig, score, importance, name):
    """Quantize ``linear``'s weight into ``target`` (the same module for the data-free step,
    which works in place as torchao's handlers do, so a bare nn.Linear can be quantized)."""
    perm = _shared_permutation(score, config.n_outliers)
    qw = AtomQuantTensor.from_hp(
        linear.weight.detach(), perm, config.n_outliers, config.group_size, config.weight_clip_ratio,
        config.act_clip_ratio, importance, what=name,
    )
    if config.act_mapping == "asymmetric":
        qw = qw.with_asymmetric_activations()
    target.weight = torch.nn.Parameter(qw, requires_grad=False)
    target.bias = linear.bias
    target.extra_repr = types.MethodType(_atom_linear_extra_repr, target)
    return target


def _gptq_into(module, target: torch.nn.Linear, config: AtomConfig, name: str):
    """The convert step with GPTQ rounding (``atom_ao.gptq``), from the observer's Hessian."""
    if module.hessian is None:
        raise RuntimeError(f"{name}: weight_method='gptq' needs the Hessian: prepare with "
                           "atom_config(step='prepare', weight_method='gptq')")
    perm = _shared_permutation(module.act_sq_sum, config.n_outliers)
    t = getattr(module, "_gptq_result", None)  # rows of a GPTQ run stacked with same-input linears
    if t is None:
        t = gptq_quantize_weight(module.weight.detach().float(), module.hessian, perm, config.n_outliers,
                                 config.group_size, config.weight_clip_ratio, config.gptq_damp, what=name)
    t["perm"] = perm
    qw = AtomQuantTensor(**t, group_size=config.group_size, act_clip_ratio=config.act_clip_ratio,
                         dtype=module.weight.dtype)
    if config.act_mapping == "asymmetric":
        qw = qw.with_asymmetric_activations()
    module.hessian = None  # free it as soon as it is used
    target.weight = torch.nn.Parameter(qw, requires_grad=False)
    target.bias = module.bias
    target.extra_repr = types.MethodType(_atom_linear_extra_repr, target)
    return target


@register_quantize_module_handler(AtomConfig)
def _atom_transform(module: torch.nn.Module, config: AtomConfig) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Linear):
        return module
    if isinstance(module.weight, AtomQuantTensor):
        return module  # already quantized (e.g. a tied weight visited twice)
    name = _layer_name(module)
    if config.step != "prepare":
        from atom_ao.inductor import auto_install

        auto_install(config.inductor_passes)
    if config.step == "prepare":
        if config.weight_method == "gptq":
            return AtomObservedLinear.from_float(
                module, hessian=config.gptq_hessian,
                quant_params=(config.n_outliers, config.group_size, config.act_clip_ratio,
                              config.act_mapping == "asymmetric"))
        return AtomObservedLinear.from_float(module)
    if config.step == "convert":
        if not isinstance(module, AtomObservedLinear):
            return module  # not prepared: leave it as it is, as torchao's AWQ does
        tokens = int(module.act_tokens)
        if tokens == 0:
            raise RuntimeError(f"{name}: no calibration data reached this layer between prepare and convert")
        importance = (module.act_sq_sum / tokens).float()
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        if config.weight_method == "gptq":
            return _gptq_into(module, plain, config, name)
        return _quantize_into(module, plain, config, module.act_sq_sum, importance, name)
    if config.weight_method == "gptq":
        raise ValueError(f"{name}: weight_method='gptq' needs calibration data: use the prepare / calibrate / "
                         "convert steps or atom_ao.quantize_calibrated, not the data-free step=None")
    return _quantize_into(module, module, config, _data_free_score(module), None, name)
