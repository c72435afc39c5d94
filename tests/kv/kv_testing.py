"""Shared pieces of the KV-cache tests: a tiny random Llama and a fake-quant reference attention."""

import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from atom_ao.kv.attention import _plain_attention
from atom_ao.kv.format import dequantize_kv, quantize_kv


def tiny_llama(heads=4, kv_heads=2, head_dim=64, layers=2, dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512, hidden_size=heads * head_dim, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                      max_position_embeddings=1024, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init: peakier, less tie-prone logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(2.5)
    return model.to(device=device, dtype=dtype)


def fake_quant(x):
    meta = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float16
    return dequantize_kv(*quantize_kv(x, meta), x.dtype)


def fake_quant_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """The spec of a full-INT4 forward: K/V quantized and dequantized, then causal attention."""
    out = _plain_attention(query, fake_quant(key), fake_quant(value), None, scaling)
    return out.transpose(1, 2), None


AttentionInterface.register("kv_test_fake_quant", fake_quant_attention)
