"""Accuracy of the INT4 KV cache on a real model: greedy agreement and perplexity vs a float cache.

    python -m atom_ao.kv.accuracy                      # SmolLM2-135M, float32, CPU
    python -m atom_ao.kv.accuracy --windows 8 --seq-len 1024 --device cuda --dtype bfloat16

Perplexity modes (held-out wiki text, ``atom_ao.data.eval_tokens``, non-overlapping windows):

* ``float``: the model's own attention, no cache quantization (the reference);
* ``int4``: ``AtomKVCache(prefill="int4", rotate=False)``: every attention reads the INT4 cache,
  the prompt's too (the cache's full effect); K quantized after RoPE;
* ``int4-rotate``: the same with the Hadamard rotation (``rotate=True``, the default cache);
* ``int4-rotate-noshift``: ``int4-rotate`` without the key shift (``k_shift=None``: models
  with a ``k_proj`` bias, Qwen2, get one by default; see ``key_shift_from_bias``);
* ``int4-decode``: the default cache; the first quarter of each window is a float prefill, the
  rest goes through the cache in chunks that read INT4, as decode steps do (query t sees the
  INT4 K/V of tokens <= t);
* ``int4-pre-rope``: simulation of the alternative to ``int4``: K quantized *before* RoPE
  (un-rotated, quantized, dequantized, rotated back), V as in ``int4``, no Hadamard;
* ``int4-before-rope``: ``AtomKVCache(prefill="int4", k_before_rope=True)``: the cache that
  stores keys before RoPE minus the K bias (the attention ops add it back and rotate), V with
  the Hadamard rotation;
* ``int4-pre-rope-bias``: ``int4-pre-rope`` with ``k_proj``'s bias (Qwen2) taken out of every
  key before quantization and added back after (before RoPE the bias is one constant vector a
  head, so a kernel would add it to the dequantized key before rotating it); the same as
  ``int4-pre-rope`` for models without the bias.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache

from atom_ao.kv.attention import _plain_attention
from atom_ao.kv.cache import AtomKVCache, with_cache
from atom_ao.kv.format import dequantize_kv, quantize_kv

MODES = ("float", "int4", "int4-rotate", "int4-rotate-noshift", "int4-before-rope", "int4-decode", "int4-pre-rope",
         "int4-pre-rope-bias")


def _fake_quant(x: torch.Tensor) -> torch.Tensor:
    """(..., D) -> the INT4 cache's round trip, with the meta dtype the cache would use."""
    meta = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float16
    return dequantize_kv(*quantize_kv(x, meta), x.dtype)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def _pre_rope_attention(model, restore_bias: bool = False):
    """An attention function quantizing K before RoPE: un-rotate, fake-quantize, rotate back.
    ``restore_bias``: quantize the key minus ``k_proj``'s bias and add the bias back after."""
    rotary = model.model.rotary_emb

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        pos = kwargs["position_ids"]
        cos, sin = rotary(key, pos)  # (B, T, D)
        cos, sin = cos[:, None].to(key.dtype), sin[:, None].to(key.dtype)
        k_pre = key * cos - _rotate_half(key) * sin  # RoPE is a rotation: this undoes it
        bias = getattr(module.k_proj, "bias", None) if restore_bias else None
        if bias is not None:
            bias = bias.view(key.shape[1], 1, key.shape[-1]).to(key.dtype)  # (kv_heads, 1, D)
            kq = _fake_quant(k_pre - bias) + bias
        else:
            kq = _fake_quant(k_pre)
        k_hat = kq * cos + _rotate_half(kq) * sin
        out = _plain_attention(query, k_hat, _fake_quant(value), None, scaling)
        return out.transpose(1, 2), None

    return attention


@torch.no_grad()
def window_nll(model, window: torch.Tensor, mode: str, chunk: int = 64) -> tuple[float, int]:
    """Summed NLL (float64) and count of the tokens after the first of a (1, L) window."""
    if mode in ("float", "int4-pre-rope", "int4-pre-rope-bias"):
        logits = model(window, use_cache=False).logits
    elif mode in ("int4", "int4-rotate", "int4-rotate-noshift"):
        cache = AtomKVCache(model, prefill="int4", rotate=mode != "int4", k_before_rope=False,
                            k_shift=None if mode.endswith("noshift") else "bias")
        logits = model(window, **with_cache(model, cache), use_cache=True).logits
    elif mode == "int4-before-rope":
        cache = AtomKVCache(model, prefill="int4", k_before_rope=True)
        logits = model(window, **with_cache(model, cache), use_cache=True).logits
    elif mode == "int4-decode":
        cache = AtomKVCache(model, k_before_rope=False)
        n0 = max(1, window.shape[1] // 4)
        parts = [model(window[:, :n0], **with_cache(model, cache), use_cache=True).logits]
        for s in range(n0, window.shape[1], chunk):
            parts.append(model(window[:, s:s + chunk], **with_cache(model, cache), use_cache=True).logits)
        logits = torch.cat(parts, dim=1)
    else:
        raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")
    nll = F.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="sum")
    return float(nll.double()), window.shape[1] - 1


def perplexity(model, tokens: torch.Tensor, mode: str, seq_len: int = 512, windows: int = 4) -> float:
    """exp(mean NLL) over the first ``windows`` non-overlapping windows of ``tokens`` (1, T)."""
    device = next(model.parameters()).device
    impl = model.config._attn_implementation
    if mode.startswith("int4-pre-rope"):
        AttentionInterface.register("atom_int4_pre_rope_sim", _pre_rope_attention(model, mode.endswith("bias")))
        model.set_attn_implementation("atom_int4_pre_rope_sim")
    nll, count = 0.0, 0
    try:
        for i in range(windows):
            w = tokens[:, i * seq_len:(i + 1) * seq_len].to(device)
            if w.shape[1] < 2:
                break
            a, b = window_nll(model, w, mode)
            nll, count = nll + a, count + b
    finally:
        model.set_attn_implementation(impl)
    return math.exp(nll / count)


@torch.no_grad()
def greedy_agreement(model, input_ids: torch.Tensor, new_tokens: int = 32, **cache_kw) -> dict:
    """Greedy generation with a float cache (the model's own attention) and with ``AtomKVCache``.

    Returns both continuations, ``same_prefix`` (tokens identical before the first difference),
    ``same_positions`` (positions equal anywhere) and ``teacher_forced`` (steps where the INT4
    cache, fed the float continuation, predicts the same next token: agreement without the
    compounding of one early flip)."""
    impl = model.config._attn_implementation
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, top_p=None, top_k=None,
               temperature=None)
    try:
        ref = model.generate(input_ids, **with_cache(model, DynamicCache(config=model.config)), **gen)
        q = model.generate(input_ids, **with_cache(model, AtomKVCache(model, **cache_kw)), **gen)
        n = input_ids.shape[1]
        ref_new, q_new = ref[0, n:], q[0, n:]
        diff = (ref_new != q_new).nonzero()
        prefix = int(diff[0]) if len(diff) else new_tokens
        # teacher forcing: the prompt, then the float continuation in one chunk; a chunk reads the
        # INT4 cache exactly as decode steps do (query t sees the INT4 K/V of tokens <= t)
        cache = AtomKVCache(model, **cache_kw)
        first = model(input_ids, **with_cache(model, cache), use_cache=True).logits[:, -1:]
        rest = model(ref_new[None, :-1], **with_cache(model, cache), use_cache=True).logits
        hits = int((torch.cat([first, rest], 1)[0].argmax(-1) == ref_new).sum())
    finally:
        model.set_attn_implementation(impl)
    return {"float_tokens": ref_new.tolist(), "int4_tokens": q_new.tolist(), "same_prefix": prefix,
            "same_positions": int((ref_new == q_new).sum()), "teacher_forced": hits, "new_tokens": new_tokens}


PROMPT = "The history of the city of Paris began"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--new-tokens", type=int, default=32)
    rope = ap.add_mutually_exclusive_group()
    rope.add_argument("--k-before-rope", action="store_true", help="the greedy comparison with AtomKVCache(k_before_rope=True)")
    rope.add_argument("--k-after-rope", action="store_true", help="the greedy comparison with AtomKVCache(k_before_rope=False)")
    args = ap.parse_args()
    from atom_ao.data import eval_tokens, load_model

    t0 = time.time()
    model, tok = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    print(f"{args.model} ({args.dtype}, {args.device}) loaded in {time.time() - t0:.0f} s; attention "
          f"{model.config._attn_implementation}")
    if args.new_tokens > 0:
        ids = tok(PROMPT, return_tensors="pt").input_ids.to(args.device)
        # neither flag: AtomKVCache's default (before RoPE for models with a K bias)
        kw = {"k_before_rope": True} if args.k_before_rope else {"k_before_rope": False} if args.k_after_rope else {}
        g = greedy_agreement(model, ids, args.new_tokens, **kw)
        print(f"greedy, prompt {PROMPT!r}, {g['new_tokens']} new tokens: identical prefix {g['same_prefix']}, "
              f"equal positions {g['same_positions']}, teacher-forced top-1 agreement {g['teacher_forced']}")
        print("  float:", repr(tok.decode(g["float_tokens"])))
        print("  int4: ", repr(tok.decode(g["int4_tokens"])))
    if args.windows <= 0:  # greedy comparison only
        return
    tokens = eval_tokens(tok)
    print(f"\nperplexity, held-out wiki, {args.windows} windows x {args.seq_len} tokens")
    print("| mode | ppl | s |\n|---|---|---|")
    for mode in args.modes.split(","):
        t0 = time.time()
        ppl = perplexity(model, tokens, mode, args.seq_len, args.windows)
        print(f"| {mode} | {ppl:.3f} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
