"""INT4 KV cache (Atom): per-token, per-head asymmetric INT4 K/V, Triton kernels, transformers glue.

    from atom_ao.kv import AtomKVCache
    out = model.generate(**inputs, cache=AtomKVCache(model))  # older transformers: past_key_values=

* ``atom_ao.kv.format``: the storage format and its plain-PyTorch quantizer (the spec);
* ``atom_ao.kv.reference``: attention references (dequantize + softmax attention);
* ``atom_ao.ops.kv_write`` / ``kv_decode_attention`` / ``kv_prefill_attention``: the
  ``atom_ao::`` ops, each with its Triton kernel beside its reference;
* ``atom_ao.kv.cache``: ``AtomKVCache``, a transformers ``Cache``;
* ``atom_ao.kv.attention``: the ``"atom_int4"`` attention implementation (registered on import);
* ``atom_ao.kv.accuracy``: greedy agreement and perplexity, INT4 vs float cache;
* ``atom_ao.kv.smooth``: ``smooth_keys_``, key smoothing folded into q_proj / k_proj (exact in
  float) so the INT4 cache's per-token range is not taken by a few key channels.
"""

from atom_ao.kv.attention import ATTN_IMPLEMENTATION, atom_int4_attention, enable
from atom_ao.kv.cache import AtomKVCache, AtomKVLayer, with_cache
from atom_ao.kv.format import dequantize_kv, quantize_kv
from atom_ao.kv.smooth import smooth_keys_

__all__ = ["ATTN_IMPLEMENTATION", "AtomKVCache", "AtomKVLayer", "atom_int4_attention", "dequantize_kv", "enable",
           "quantize_kv", "smooth_keys_", "with_cache"]
