"""Smoothing the keys before the INT4 KV cache: key channel c divided by s_c, query channel c
multiplied by s_c, both folded into the float model's ``q_proj`` / ``k_proj`` rows.

The INT4 cache quantizes each token's key over head_dim with one scale and zero point, so a few
key channels that are always large (the K outliers of Llama/Qwen models) take the whole range
and the other channels get a few levels. Scores are unchanged by the scaling, q.k = (q * s).(k / s),
and so is RoPE when s is equal on the two channels it turns together (transformers' "rotate_half"
form pairs c with c + head_dim / 2): a rotation of a pair commutes with scaling both by one
factor. So the fold is exact in real arithmetic; only the cache's rounding sees the smaller range.
(The idea is QServe's SmoothAttention; here s_c = max|k_c|^alpha over calibration tokens, with
the K bias left out because the cache stores keys without it where the model has one.)

Call it on the float model before quantizing the linears (their per-row weight scales absorb the
new row norms), then generate with ``AtomKVCache``::

    smooth_keys_(model, calibration_batches, alpha=0.5)
    quantize_calibrated(model, calibration_batches, atom_config(weight_method="gptq"))

Without an INT4 cache the model computes the same function (to float rounding).

Measured (session 11, README "Key smoothing"): it helps the plain cache (SmolLM2-135M wiki / C4
with INT4 KV 23.59 / 28.95 -> 22.97 / 28.20) but not the default caches, which do better without
it (the Hadamard rotation after RoPE: 22.45 / 26.98 -> 22.54 / 27.74; Qwen2.5's keys before RoPE
without their bias have no outlier channels left: 32.87 / 24.61 -> 33.01 / 24.46). So nothing
calls it by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from atom_ao.calibration import _feed
from atom_ao.kv.cache import attention_head_dim


def _float_linear(m) -> bool:
    return isinstance(m, torch.nn.Linear) and type(m.weight.data) is torch.Tensor and m.weight.is_floating_point()


def _attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    found = [(name, m) for name, m in model.named_modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]
    if not found:
        raise ValueError("smooth_keys_: no attention module with q_proj and k_proj in this model")
    for name, m in found:
        if not (_float_linear(m.q_proj) and _float_linear(m.k_proj)):
            raise ValueError(f"smooth_keys_: {name}.q_proj / k_proj are not float nn.Linear layers (already "
                             "quantized?): smooth the float model first, then quantize")
    return found


def _check(model: torch.nn.Module, name: str, attn: torch.nn.Module, d: int) -> None:
    if hasattr(attn, "k_norm") or hasattr(attn, "q_norm"):
        raise ValueError(f"smooth_keys_: {name} normalises q / k after the projection (q_norm / k_norm): "
                         "a scale folded into k_proj would be undone by the norm")
    cfg = getattr(model, "config", None)
    partial = getattr(cfg, "partial_rotary_factor", 1.0)
    if partial not in (None, 1.0):
        raise ValueError(f"smooth_keys_: partial rotary embeddings (partial_rotary_factor={partial}) are not supported")
    q, k = attn.q_proj.out_features, attn.k_proj.out_features
    if d % 2 or k % d or q % k:
        raise ValueError(f"smooth_keys_: {name}: q_proj {q} / k_proj {k} outputs do not split into heads of "
                         f"{d} (even) with whole query groups")


@torch.no_grad()
def key_channel_max(model: torch.nn.Module, batches: Iterable | torch.Tensor, progress: bool = True) -> dict[str, torch.Tensor]:
    """Per attention module: (kv_heads, head_dim) max |k| over the calibration tokens, K bias left out."""
    stats, hooks = {}, []
    for name, attn in _attention_modules(model):
        d = attention_head_dim(model, attn)
        _check(model, name, attn, d)

        def hook(mod, args, out, name=name, d=d):
            k = out if mod.bias is None else out - mod.bias
            m = k.detach().abs().reshape(-1, k.shape[-1] // d, d).amax(0).float()
            stats[name] = m if name not in stats else torch.maximum(stats[name], m)

        hooks.append(attn.k_proj.register_forward_hook(hook))
    try:
        _feed(model, batches, progress, "key statistics")
    finally:
        for h in hooks:
            h.remove()
    return stats


def key_scales(channel_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = max|k|^alpha, equal on the two channels of each RoPE pair (c, c + head_dim / 2)."""
    half = channel_max.shape[-1] // 2
    pair = torch.maximum(channel_max[..., :half], channel_max[..., half:])
    s = pair.clamp(min=1e-5) ** alpha
    return torch.cat([s, s], -1)


@torch.no_grad()
def smooth_keys_(model: torch.nn.Module, batches: Iterable | torch.Tensor, alpha: float = 0.5,
                 progress: bool = True) -> dict[str, torch.Tensor]:
    """Fold key smoothing into every attention's q_proj / k_proj (in place); returns the scales
    per module, (kv_heads, head_dim). ``alpha`` in [0, 1]: 0 leaves the model as it is, 1 makes
    every key channel's calibration maximum 1."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_keys_: alpha must be in [0, 1], got {alpha}")
    stats = key_channel_max(model, batches, progress)
    scales = {}
    for name, attn in _attention_modules(model):
        d = attention_head_dim(model, attn)
        s = key_scales(stats[name], alpha)  # (kv_heads, d)
        kv_heads = s.shape[0]
        group = attn.q_proj.out_features // (kv_heads * d)
        k_rows = s.reshape(-1)
        q_rows = s.repeat_interleave(group, 0).reshape(-1)  # query head j reads kv head j // group
        for lin, rows in ((attn.k_proj, 1.0 / k_rows), (attn.q_proj, q_rows)):
            rows = rows.to(lin.weight.device)
            lin.weight.copy_(lin.weight.float() * rows[:, None])  # in float32, one rounding
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.float() * rows)
        scales[name] = s
    return scales
