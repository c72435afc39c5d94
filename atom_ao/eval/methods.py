"""The quantization methods the evaluation compares, each a function (model, calibration) -> model.

Every method leaves ``lm_head`` (and the embeddings) in float, as the Atom paper does, and
quantizes every other ``nn.Linear`` of the decoder.

| name | what |
|---|---|
| ``float`` | the model as loaded (GGUF checkpoints: the dequantized weights are the reference) |
| ``naive-w4a4`` | per-group INT4 weights and activations (group 128), no outlier channels, no clipping (weights and activations clip 1.0), round to nearest, data-free |
| ``atom-rtn`` | Atom W4A4, calibrated (outliers from calibration, weight clip search), round to nearest |
| ``atom-gptq`` | Atom W4A4, calibrated, GPTQ weights, block by block (``quantize_calibrated``) |
| ``atom-gptq-kv4`` | ``atom-gptq`` + INT4 KV cache (``atom_ao.kv``): every attention reads the INT4 cache |
| ``torchao-int8dyn`` | torchao ``Int8DynamicActivationInt8WeightConfig``: INT8 per-channel weights, INT8 per-token dynamic activations (W8A8) |
| ``atom-gptq-asym`` (extra) | ``atom-gptq`` with asymmetric activations (``act_mapping="asymmetric"``: a zero point per token and group, not the paper's; activation clip 1.0, its default) |
| ``atom-gptq-out256[-kv4]``, ``atom-gptq-asym-out256[-kv4]`` (extra) | the same with 256 INT8 outlier channels instead of the paper's 128 |
| ``float-kv4-smooth``, ``atom-gptq[-asym-out256]-smooth-kv4`` (extra) | key smoothing (``atom_ao.kv.smooth``, alpha 0.5) folded into q_proj / k_proj first, then as above with the INT4 KV cache |

``kv4`` only changes how the model is run (``forward``), so ``atom-gptq-kv4`` reuses the
``atom-gptq`` model when both are evaluated.
"""

from __future__ import annotations

import torch


def decoder_linears(module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


def _atom(model, batches, progress=True, sequential=None, **cfg):
    import atom_ao

    atom_ao.quantize_calibrated(model, batches, atom_ao.atom_config(**cfg), filter_fn=decoder_linears,
                                progress=progress, sequential=sequential)
    return model


def _smooth_keys(model, batches, progress=True, alpha=0.5, then=None, **cfg):
    """Key smoothing for the INT4 cache (``atom_ao.kv.smooth``) on the float model, then ``then``."""
    from atom_ao.kv.smooth import smooth_keys_

    smooth_keys_(model, batches, alpha=alpha, progress=progress)
    return model if then is None else then(model, batches, progress=progress, **cfg)


def _naive(model, batches, progress=True, **cfg):
    from torchao.quantization import quantize_

    import atom_ao

    quantize_(model, atom_ao.atom_config(n_outliers=0, weight_clip_ratio=1.0, act_clip_ratio=1.0, **cfg),
              filter_fn=decoder_linears)
    return model


def _int8dyn(model, batches, progress=True):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=decoder_linears)
    return model


# name -> (description, quantize function or None for float, its keyword arguments, kv4?)
METHODS = {
    "float": ("float (reference)", None, {}, False),
    "naive-w4a4": ("naive W4A4 (no outliers, RTN, no clipping)", _naive, {}, False),
    "atom-rtn": ("Atom W4A4, RTN (calibrated)", _atom, {}, False),
    "atom-gptq": ("Atom W4A4, GPTQ", _atom, {"weight_method": "gptq"}, False),
    "atom-gptq-kv4": ("Atom W4A4, GPTQ + INT4 KV", _atom, {"weight_method": "gptq"}, True),
    "torchao-int8dyn": ("torchao Int8 dynamic W8A8", _int8dyn, {}, False),
}

# extra rows (the ablation uses them too): pass them to --methods like the others
EXTRA = {
    "float-kv4": ("float + INT4 KV only", None, {}, True),
    "atom-rtn-kv4": ("Atom W4A4, RTN + INT4 KV", _atom, {}, True),
    "atom-gptq-quanth": ("Atom W4A4, GPTQ, Hessian of quantized activations", _atom,
                         {"weight_method": "gptq", "gptq_hessian": "quant"}, False),
    "atom-gptq-float": ("Atom W4A4, GPTQ, Hessian of float activations", _atom,
                        {"weight_method": "gptq", "gptq_hessian": "float"}, False),
    "atom-rtn-asym": ("Atom W4A4, RTN, asymmetric activations", _atom, {"act_mapping": "asymmetric"}, False),
    "atom-gptq-asym": ("Atom W4A4, GPTQ, asymmetric activations", _atom,
                       {"weight_method": "gptq", "act_mapping": "asymmetric"}, False),
    "atom-gptq-asym-clip0.9": ("Atom W4A4, GPTQ, asymmetric activations, activation clip 0.9", _atom,
                               {"weight_method": "gptq", "act_mapping": "asymmetric", "act_clip_ratio": 0.9}, False),
    "atom-gptq-asym-kv4": ("Atom W4A4, GPTQ, asymmetric activations + INT4 KV", _atom,
                           {"weight_method": "gptq", "act_mapping": "asymmetric"}, True),
    # 256 INT8 outlier channels instead of the paper's 128 (the outlier-count ablation, README)
    "atom-gptq-out256": ("Atom W4A4, GPTQ, 256 INT8 outliers", _atom, {"weight_method": "gptq", "n_outliers": 256},
                         False),
    "atom-gptq-out256-kv4": ("Atom W4A4, GPTQ, 256 INT8 outliers + INT4 KV", _atom,
                             {"weight_method": "gptq", "n_outliers": 256}, True),
    "atom-gptq-asym-out256": ("Atom W4A4, GPTQ, asymmetric activations, 256 INT8 outliers", _atom,
                              {"weight_method": "gptq", "act_mapping": "asymmetric", "n_outliers": 256}, False),
    "atom-gptq-asym-out256-kv4": ("Atom W4A4, GPTQ, asymmetric activations, 256 INT8 outliers + INT4 KV", _atom,
                                  {"weight_method": "gptq", "act_mapping": "asymmetric", "n_outliers": 256}, True),
    # keys smoothed into q_proj / k_proj before the INT4 cache (atom_ao.kv.smooth, alpha 0.5)
    "float-kv4-smooth": ("float + INT4 KV, keys smoothed", _smooth_keys, {}, True),
    "atom-gptq-smooth-kv4": ("Atom W4A4, GPTQ + INT4 KV, keys smoothed", _smooth_keys,
                             {"then": _atom, "weight_method": "gptq"}, True),
    "atom-gptq-asym-out256-smooth-kv4": ("Atom W4A4, GPTQ, asymmetric activations, 256 INT8 outliers + INT4 KV, "
                                         "keys smoothed", _smooth_keys,
                                         {"then": _atom, "weight_method": "gptq", "act_mapping": "asymmetric",
                                          "n_outliers": 256}, True),
    "atom-gptq-onepass": ("Atom W4A4, GPTQ, all layers calibrated at once (not sequential)", _atom,
                          {"weight_method": "gptq", "sequential": False}, False),
}
ALL = {**METHODS, **EXTRA}


def kv4_forward(rotate: bool | None = None, before_rope: bool | None = None):
    """A ``forward(model, ids) -> logits`` whose attention reads an INT4 KV cache for every token
    (``AtomKVCache(prefill="int4")``; K quantized before RoPE with ``before_rope=True``, after it
    with False; the Hadamard rotation on / off with ``rotate``; None: the cache's defaults, keys
    before RoPE and no rotation for models with a K bias, after RoPE and rotated otherwise), the
    float attention restored after."""
    from atom_ao.kv.cache import AtomKVCache, with_cache

    def forward(model, ids):
        impl = model.config._attn_implementation
        try:
            cache = AtomKVCache(model, prefill="int4", rotate=rotate, k_before_rope=before_rope)
            return model(ids, **with_cache(model, cache), use_cache=True).logits
        finally:
            model.set_attn_implementation(impl)

    return forward
